"""Write a COG from already-compressed parts, copying compressed tiles verbatim.

The parallel COG path compresses the full resolution and the overviews concurrently into plain
GTiffs; this module lays them out as GDAL's COG driver does, so no pixel is decoded or re-encoded.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .tiff import TIFF_TYPE_SIZES, FieldType, TiffTag

_COG_GHOST_CONTENT = (
    b"LAYOUT=IFDS_BEFORE_DATA\n"
    b"BLOCK_ORDER=ROW_MAJOR\n"
    b"BLOCK_LEADER=SIZE_AS_UINT4\n"
    b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    b"KNOWN_INCOMPATIBLE_EDITION=NO\n "
)
_COG_GHOST = b"GDAL_STRUCTURAL_METADATA_SIZE=%06d bytes\n" % len(_COG_GHOST_CONTENT) + _COG_GHOST_CONTENT
#: Tags an overview directory takes over from the full-resolution one (sample layout and coding).
_OVERVIEW_TAGS = (TiffTag.BITS_PER_SAMPLE, TiffTag.COMPRESSION, TiffTag.PHOTOMETRIC, TiffTag.SAMPLES_PER_PIXEL, TiffTag.PLANAR_CONFIG, TiffTag.PREDICTOR, TiffTag.TILE_WIDTH, TiffTag.TILE_LENGTH, TiffTag.EXTRA_SAMPLES, TiffTag.SAMPLE_FORMAT)
_RawEntry = Tuple[int, int, int, bytes]  # tag, TIFF type, count, little-endian value bytes


def _tiff_single_ifd(path: str, index: Optional[int] = None) -> List[_RawEntry]:
    """All entries of the only IFD of a little-endian classic TIFF written by GDAL, or (``index``)
    of its index-th IFD, e.g. an overview of a COG; ValueError otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:4] != b"II*\x00":
            raise ValueError(f"{path}: not a little-endian classic TIFF")
        offset = struct.unpack("<I", head[4:8])[0]
        for _ in range(index or 0):
            fh.seek(offset)
            n = struct.unpack("<H", fh.read(2))[0]
            fh.seek(offset + 2 + 12 * n)
            offset = struct.unpack("<I", fh.read(4))[0]
            if not offset:
                raise ValueError(f"{path}: has no IFD {index}")
        fh.seek(offset)
        n = struct.unpack("<H", fh.read(2))[0]
        raw = fh.read(n * 12 + 4)
        if len(raw) < n * 12 + 4:
            raise ValueError(f"{path}: truncated IFD")
        if index is None and struct.unpack("<I", raw[n * 12 :])[0]:
            raise ValueError(f"{path}: more than one IFD")
        entries: List[_RawEntry] = []
        for k in range(n):
            tag, typ, count = struct.unpack("<HHI", raw[k * 12 : k * 12 + 8])
            if typ not in TIFF_TYPE_SIZES:
                raise ValueError(f"{path}: tag {tag} has unknown type {typ}")
            nbytes = count * TIFF_TYPE_SIZES[typ]
            inline = raw[k * 12 + 8 : k * 12 + 12]
            if nbytes <= 4:
                data = inline[:nbytes]
            else:
                fh.seek(struct.unpack("<I", inline)[0])
                data = fh.read(nbytes)
                if len(data) < nbytes:
                    raise ValueError(f"{path}: tag {tag} data truncated")
            entries.append((tag, typ, count, data))
    return entries


def _tile_index(entries: List[_RawEntry]) -> Tuple[List[int], List[int]]:
    found = {tag: (typ, count, data) for tag, typ, count, data in entries}
    if TiffTag.TILE_OFFSETS not in found or TiffTag.TILE_BYTE_COUNTS not in found:
        raise ValueError("not a tiled TIFF")
    out = []
    for tag in (TiffTag.TILE_OFFSETS, TiffTag.TILE_BYTE_COUNTS):
        typ, count, data = found[tag]
        if typ not in (FieldType.SHORT, FieldType.LONG):
            raise ValueError(f"tag {tag} has type {typ}")
        out.append(list(struct.unpack("<" + ("H" if typ == FieldType.SHORT else "I") * count, data)))
    return out[0], out[1]


def _short_or_long(tag: int, value: int) -> _RawEntry:
    return (tag, FieldType.SHORT, 1, struct.pack("<H", value)) if value < 65536 else (tag, FieldType.LONG, 1, struct.pack("<I", value))


#: One image of the COG: the part it comes from, its entries (without the tile index), its tiles' (offsets, byte counts).
_Image = Tuple[str, List[_RawEntry], Tuple[List[int], List[int]]]
#: Tags an overview must share with the full resolution, or its tiles could not be copied verbatim.
_SAME_CODING_TAGS = (TiffTag.BITS_PER_SAMPLE, TiffTag.COMPRESSION, TiffTag.SAMPLES_PER_PIXEL, TiffTag.PLANAR_CONFIG, TiffTag.PREDICTOR, TiffTag.TILE_WIDTH, TiffTag.TILE_LENGTH, TiffTag.SAMPLE_FORMAT)


def assemble_cog(full_res: str, overviews: Sequence[Union[str, Tuple[str, int]]], out: str) -> None:
    """Write a COG from already-compressed parts, copying the compressed tiles verbatim.

    ``full_res`` is a tiled GTiff of the full-resolution image (it carries every tag:
    georeferencing, metadata, nodata, colour interpretation, compression, predictor) and
    ``overviews`` are tiled GTiffs of the overview levels (or ``(path, index)``: the index-th directory
    of a file with several, e.g. an overview of a COG), largest first, encoded with the
    same compression, predictor and sample layout. The result has the layout GDAL's COG
    driver writes: the ghost area, all IFDs (full resolution first), then the tile data from
    the smallest overview to the full resolution, row-major, each tile preceded by its size
    (uint32) and followed by a copy of its last 4 bytes. Classic TIFF only: raises
    ValueError when a part is not a single-IFD little-endian classic TIFF or the result
    would reach 4 GB.
    """
    images = _read_parts(full_res, overviews)
    ifd_offsets, new_offsets, end = _plan_layout(images)
    with open(out, "wb") as fh:
        _write_ifds(fh, images, ifd_offsets, new_offsets)
        fh.flush()
        _copy_tiles(fh.fileno(), images)
        fh.seek(0, os.SEEK_END)
        if fh.tell() != end:
            raise ValueError("internal layout error")


def _read_parts(full_res: str, overviews: Sequence[Union[str, Tuple[str, int]]]) -> List[_Image]:
    """The images to assemble, full resolution first; ValueError for a part that cannot be copied."""
    main = _tiff_single_ifd(full_res)
    main_tags = {e[0]: e for e in main}
    images = [(full_res, [e for e in main if e[0] not in (TiffTag.TILE_OFFSETS, TiffTag.TILE_BYTE_COUNTS)], _tile_index(main))]
    for part in overviews:
        path, index = (part, None) if isinstance(part, str) else part
        images.append(_overview_image(path, index, main_tags))
    return images


def _overview_image(path: str, index: Optional[int], main_tags: Dict[int, _RawEntry]) -> _Image:
    """An overview as a reduced-resolution image of the COG.

    Its directory keeps only its own size and takes every other tag from the full resolution
    (``_OVERVIEW_TAGS``), as GDAL's COG driver writes it; its coding must match, or its tiles
    would not decode under those tags."""
    entries = _tiff_single_ifd(path, index)
    tags = {e[0]: e for e in entries}
    for tag in _SAME_CODING_TAGS:
        if (tag in tags) != (tag in main_tags) or (tag in tags and tags[tag][1:] != main_tags[tag][1:]):
            raise ValueError(f"overview {path} differs from the full resolution in tag {tag}")
    own = [(TiffTag.NEW_SUBFILE_TYPE, FieldType.LONG, 1, struct.pack("<I", 1)),
           _short_or_long(TiffTag.IMAGE_WIDTH, _unsigned(tags[TiffTag.IMAGE_WIDTH])),
           _short_or_long(TiffTag.IMAGE_LENGTH, _unsigned(tags[TiffTag.IMAGE_LENGTH]))]
    own += [main_tags[t] for t in _OVERVIEW_TAGS if t in main_tags]
    return (path, sorted(own), _tile_index(entries))


def _unsigned(entry: _RawEntry) -> int:
    """The value of a one-value SHORT or LONG entry."""
    return struct.unpack("<H" if entry[1] == FieldType.SHORT else "<I", entry[3])[0]


def _ifd_size(entries: List[_RawEntry], ntiles: int) -> int:
    """Bytes of a directory: its entries plus the tile index's two, then their out-of-line values (word aligned)."""
    size = 2 + 12 * (len(entries) + 2) + 4
    size += sum(len(d) + (len(d) & 1) for _, _, _, d in entries if len(d) > 4)
    return size + (2 * 4 * ntiles if ntiles > 1 else 0)


def _plan_layout(images: List[_Image]) -> Tuple[List[int], List[List[int]], int]:
    """(each IFD's offset, each image's new tile offsets, the file's size), laid out before writing
    anything, because every IFD must point at tile data written after it.

    Tile data runs from the smallest overview to the full resolution; an empty tile keeps offset 0.
    ValueError when the result would reach 4 GB (classic TIFF offsets are 32-bit)."""
    pos = 8 + len(_COG_GHOST)
    pos += pos & 1
    ifd_offsets = []
    for _, entries, (offs, _) in images:
        ifd_offsets.append(pos)
        pos += _ifd_size(entries, len(offs))
    new_offsets: List[List[int]] = [[] for _ in images]
    for i in reversed(range(len(images))):
        for count in images[i][2][1]:
            if count:
                new_offsets[i].append(pos + 4)
                pos += 4 + count + 4
            else:
                new_offsets[i].append(0)
    if pos >= 0xFFFFFFFF:
        raise ValueError("the COG would need BigTIFF")
    return ifd_offsets, new_offsets, pos


def _write_ifds(fh: BinaryIO, images: List[_Image], ifd_offsets: List[int], new_offsets: List[List[int]]) -> None:
    """Write the header, the ghost area and every image's directory, at the planned offsets."""
    fh.write(b"II*\x00" + struct.pack("<I", ifd_offsets[0]) + _COG_GHOST)
    if fh.tell() & 1:
        fh.write(b"\x00")
    for i, (_, entries, (offs, counts)) in enumerate(images):
        start = ifd_offsets[i]
        assert fh.tell() == start
        n = len(offs)
        full = list(entries)
        full.append((TiffTag.TILE_OFFSETS, FieldType.LONG, n, struct.pack("<%dI" % n, *new_offsets[i])))
        full.append((TiffTag.TILE_BYTE_COUNTS, FieldType.LONG, n, struct.pack("<%dI" % n, *counts)))
        full.sort(key=lambda e: e[0])
        nxt = ifd_offsets[i + 1] if i + 1 < len(images) else 0
        fh.write(_ifd_bytes(full, start, nxt))


def _ifd_bytes(entries: List[_RawEntry], start: int, nxt: int) -> bytes:
    """One directory at file offset ``start`` linking to ``nxt``: the entry table, then the values
    longer than 4 bytes right behind it (word aligned), where the table points."""
    extra = bytearray()
    extra_at = start + 2 + 12 * len(entries) + 4
    table = bytearray(struct.pack("<H", len(entries)))
    for tag, typ, count, data in entries:
        if len(data) <= 4:
            table += struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\x00")
        else:
            table += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
            extra += data
            if len(extra) & 1:
                extra += b"\x00"
    table += struct.pack("<I", nxt)
    return bytes(table + extra)


def _copy_tiles(out_fd: int, images: List[_Image]) -> None:
    """Append every image's tiles, smallest overview first, each with its size leader and last-4-bytes trailer.

    The kernel copies the tiles (copy_file_range: no trip through Python) where it can; once it
    cannot, the rest goes through pread/write."""
    kernel_copy: Optional[Callable[..., int]] = getattr(os, "copy_file_range", None)
    for i in reversed(range(len(images))):
        path, _, (offs, counts) = images[i]
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, count in zip(offs, counts):
                if count:
                    kernel_copy = _copy_tile(fd, out_fd, off, count, path, kernel_copy)
        finally:
            os.close(fd)


def _copy_tile(fd: int, out_fd: int, off: int, count: int, path: str,
               kernel_copy: Optional[Callable[..., int]]) -> Optional[Callable[..., int]]:
    """Append one tile with its leader and trailer; returns ``kernel_copy``, or None once it failed."""
    tail = os.pread(fd, 4, off + count - 4) if count >= 4 else os.pread(fd, count, off)
    os.write(out_fd, struct.pack("<I", count))
    done = 0
    while kernel_copy is not None and done < count:
        try:
            n = kernel_copy(fd, out_fd, count - done, off + done)
        except OSError:
            kernel_copy = None
            break
        if n <= 0:
            raise ValueError(f"{path}: tile data truncated")
        done += n
    if done < count:
        data = os.pread(fd, count - done, off + done)
        if len(data) != count - done:
            raise ValueError(f"{path}: tile data truncated")
        os.write(out_fd, data)
    os.write(out_fd, tail.rjust(4, b"\x00"))
    return kernel_copy
