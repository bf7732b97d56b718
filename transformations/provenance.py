"""Embedding provenance (``KEY=VALUE`` pairs) in a finished COG, in its own GDAL metadata domain.

GDAL's CreateCopy does not carry custom metadata domains, and setting metadata on a COG in
update mode makes libtiff rewrite the first directory at the end of the file, which breaks the
COG layout. So the pairs are written at the TIFF level instead: a new first directory with the
``GDAL_METADATA`` tag is inserted where the old one was, and every offset behind it is shifted;
tiles are copied verbatim by the kernel, so pixels and the layout (directories before data,
ghost area, tile leaders and trailers) are unchanged.
"""

from __future__ import annotations

import os
import shutil
import struct
from typing import Dict, List, Tuple

from .tiff import TIFF_TYPE_SIZES, FieldType, TiffTag
from .xmltext import escape as _xml_escape

#: The metadata domain the converter's provenance lives in.
PROVENANCE_DOMAIN = "COG_PIPELINE"
ASCII = 2
_OFFSET_ARRAYS = (TiffTag.TILE_OFFSETS, TiffTag.STRIP_OFFSETS)
_Entry = List  # [tag, type, count, 4-byte value field]


def _read_chain(fh) -> List[Tuple[int, List[_Entry], int]]:
    """(offset, entries, next offset) of every directory of a little-endian classic TIFF."""
    fh.seek(0)
    head = fh.read(8)
    if head[:4] != b"II*\x00":
        raise ValueError("provenance can be embedded in little-endian classic TIFFs only")
    chain, offset = [], struct.unpack("<I", head[4:8])[0]
    while offset and len(chain) < 256:
        fh.seek(offset)
        n = struct.unpack("<H", fh.read(2))[0]
        raw = fh.read(12 * n + 4)
        entries = [list(struct.unpack("<HHI", raw[12 * k : 12 * k + 8])) + [raw[12 * k + 8 : 12 * k + 12]] for k in range(n)]
        chain.append((offset, entries, struct.unpack("<I", raw[12 * n :])[0]))
        offset = chain[-1][2]
    return chain


def _value(fh, entry: _Entry) -> bytes:
    nbytes = entry[2] * TIFF_TYPE_SIZES.get(entry[1], 1)
    if nbytes <= 4:
        return entry[3][:nbytes]
    fh.seek(struct.unpack("<I", entry[3])[0])
    return fh.read(nbytes)


def gdal_metadata_xml(existing: bytes, items: Dict[str, str], domain: str) -> bytes:
    """GDAL_METADATA text with ``items`` in ``domain`` (replacing that domain's old items)."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415 - only with --metadata (~10 ms import)

    text = existing.rstrip(b"\x00").decode("utf-8", "replace").strip()
    root = ET.fromstring(text) if text else ET.Element("GDALMetadata")
    for item in [i for i in root.findall("Item") if i.get("domain") == domain]:
        root.remove(item)
    for key, value in items.items():
        # GDAL escapes a value once itself before serialising (and unescapes twice on reading)
        ET.SubElement(root, "Item", name=key, domain=domain).text = _xml_escape(value, quote=True)
    return ET.tostring(root, encoding="utf-8").replace(b"<?xml version='1.0' encoding='utf-8'?>\n", b"") + b"\x00"


def embed_metadata(src: str, dst: str, items: Dict[str, str], domain: str = PROVENANCE_DOMAIN) -> None:
    """Write ``src`` to ``dst`` with ``items`` added to its first directory's GDAL metadata in ``domain``."""
    with open(src, "rb") as fh:
        chain = _read_chain(fh)
        first_at, first, first_next = chain[0]
        old = next((e for e in first if e[0] == 42112), None)
        xml = gdal_metadata_xml(_value(fh, old) if old else b"", items, domain)
    entries = sorted([e for e in first if e[0] != 42112] + [[42112, ASCII, len(xml), b""]], key=lambda e: e[0])
    size = 2 + 12 * len(entries) + 4
    block_len = size + len(xml) + (len(xml) & 1)
    delta = block_len + (block_len & 1)

    def moved(ptr: int) -> int:
        return ptr + delta if ptr >= first_at else ptr

    block = bytearray(struct.pack("<H", len(entries)))
    for tag, typ, count, field in entries:
        if tag == 42112:
            field = struct.pack("<I", first_at + size)
        elif count * TIFF_TYPE_SIZES.get(typ, 1) > 4:
            field = struct.pack("<I", moved(struct.unpack("<I", field)[0]))
        elif tag in _OFFSET_ARRAYS and count == 1:
            field = struct.pack("<I", moved(struct.unpack("<I", field)[0]))
        block += struct.pack("<HHI", tag, typ, count) + field
    block += struct.pack("<I", moved(first_next) if first_next else 0) + xml
    block += b"\x00" * (delta - len(block))
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(first_at))  # header and ghost area: a few hundred bytes
        fout.write(block)
        fin.seek(first_at)
        shutil.copyfileobj(fin, fout, 1 << 20)
    _shift_offsets(dst, chain[1:], first_at, delta)
    _shift_arrays(dst, [e for e in entries if e[0] in _OFFSET_ARRAYS], first_at, delta)


def _shift_offsets(path: str, chain, first_at: int, delta: int) -> None:
    """Patch every pointer behind the inserted directory (the first directory's own are done)."""
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, entries, nxt in chain:
            at = offset + delta
            for k, (tag, typ, count, field) in enumerate(entries):
                nbytes = count * TIFF_TYPE_SIZES.get(typ, 1)
                ptr_at = at + 2 + 12 * k + 8
                if nbytes > 4:
                    ptr = struct.unpack("<I", field)[0]
                    os.pwrite(fd, struct.pack("<I", ptr + delta if ptr >= first_at else ptr), ptr_at)
                    ptr += delta if ptr >= first_at else 0
                    if tag in _OFFSET_ARRAYS:
                        fmt = "<%d%s" % (count, "H" if typ == FieldType.SHORT else "I")
                        values = struct.unpack(fmt, os.pread(fd, nbytes, ptr))
                        if typ != FieldType.LONG:
                            raise ValueError("tile offsets that are not LONG")
                        os.pwrite(fd, struct.pack(fmt, *[v + delta if v else 0 for v in values]), ptr)
                elif tag in _OFFSET_ARRAYS and count == 1:
                    value = struct.unpack("<I", field)[0]
                    os.pwrite(fd, struct.pack("<I", value + delta if value else 0), ptr_at)
            os.pwrite(fd, struct.pack("<I", nxt + delta if nxt else 0), at + 2 + 12 * len(entries))
    finally:
        os.close(fd)


def _shift_arrays(path: str, entries: List[_Entry], first_at: int, delta: int) -> None:
    """Shift the tile offsets of the new first directory (their pointer was moved already)."""
    fd = os.open(path, os.O_RDWR)
    try:
        for tag, typ, count, field in entries:
            if count * 4 <= 4:
                continue  # inline, shifted when the directory was written
            if typ != FieldType.LONG:
                raise ValueError("tile offsets that are not LONG")
            ptr = struct.unpack("<I", field)[0]
            ptr += delta if ptr >= first_at else 0
            values = struct.unpack("<%dI" % count, os.pread(fd, 4 * count, ptr))
            os.pwrite(fd, struct.pack("<%dI" % count, *[v + delta if v else 0 for v in values]), ptr)
    finally:
        os.close(fd)
