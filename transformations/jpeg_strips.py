"""A baseline JPEG written in bounded memory, for previews too large for GDAL's JPEG driver.

Why: GDAL's JPEG driver (3.6 and 3.10 alike) always asks libjpeg for optimised Huffman tables, and it has no
creation option to turn that off. libjpeg can only optimise after it has seen every coefficient, so it keeps the
whole image's DCT coefficients in memory (2 bytes per sample: ~1.2 GB for a 20000x20000 RGB preview at 4:2:0,
~4.8 GB at 40000x40000). Neither libjpeg-turbo (system GDAL) nor the IJG libjpeg 9 bundled with rasterio is built
with a backing store (``JPEGMEM`` fails with "Backing store not supported"), so the buffer cannot be moved to disk.

How: GDAL's GTiff driver writes JPEG-compressed strips through libtiff, which with ``JPEGTABLESMODE=3`` uses
libjpeg's *standard* Huffman tables (no optimisation pass) and puts the quantisation and Huffman tables, identical
for every strip, in the ``JPEGTables`` tag. Each strip is then an independent entropy-coded segment, encoded line
by line, that starts with the DC predictions reset. That is exactly what a restart marker means in one baseline
JPEG, so the strips are joined into one JFIF file: SOI, APP0, the shared tables, one frame header of the whole
size, a restart interval of one strip, one scan header, and the strips' segments separated by RST0..RST7. Nothing
is decoded or re-encoded; the DCT, the quantisation tables (the profile's quality) and the 4:2:0 chroma
subsampling are libjpeg's, as in the JPEG driver, so the decoded pixels equal the driver's (tested); only the
Huffman coding differs (a few % more bytes).
"""

from __future__ import annotations

import struct
from typing import List, Set, Tuple

from .backend import get_backend
from .tiff import Ifd, TiffTag, read_tiff_ifds

#: Lines per strip: a multiple of the largest MCU height (16 for 4:2:0 colour, 8 for grey).
STRIP_ROWS = 16
_JFIF_APP0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00" + struct.pack(">HH", 1, 1) + b"\x00\x00"


def coefficient_buffer_bytes(width: int, height: int, bands: int) -> int:
    """What GDAL's JPEG driver holds for the whole image: 2 bytes per DCT coefficient (MCU-padded)."""
    if bands == 1:
        return 2 * (-(-width // 8) * 8) * (-(-height // 8) * 8)
    luma = (-(-width // 16) * 16) * (-(-height // 16) * 16)
    return 2 * (luma + 2 * (luma // 4))


def write_streamed_jpeg(vrt: str, strips_tif: str, out: str, bands: int, quality: int) -> None:
    """Write ``vrt`` (1 or 3 Byte bands) as a baseline JPEG at ``out``, via ``strips_tif``.

    ``strips_tif`` is the JPEG-in-TIFF intermediate (about the size of the JPEG); the caller deletes it. Raises
    GdalFailure when GDAL fails, ValueError when a strip is not what this module expects (GDAL's driver would
    need the memory the strips avoid), OSError on write errors."""
    # JPEGTABLESMODE=3: quantisation and Huffman tables shared in JPEGTables, no optimisation pass
    opts = {"COMPRESS": "JPEG", "JPEG_QUALITY": str(quality), "JPEGTABLESMODE": "3", "BLOCKYSIZE": str(STRIP_ROWS),
            "INTERLEAVE": "PIXEL", "BIGTIFF": "IF_SAFER"}
    if bands == 3:
        opts["PHOTOMETRIC"] = "YCBCR"  # libjpeg converts RGB -> YCbCr 4:2:0, as the JPEG driver does
    get_backend().create_copy("GTiff", vrt, strips_tif, opts)
    join_strips(strips_tif, out)


def _segments(data: bytes, start: int) -> Tuple[List[Tuple[int, bytes]], int]:
    """Marker segments from ``start`` up to and including SOS; returns them and where the scan data begins."""
    out: List[Tuple[int, bytes]] = []
    pos = start
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise ValueError(f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((marker, data[pos : pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:
            return out, pos


def _tables(ifd: Ifd) -> Tuple[bytes, Set[bytes]]:
    """The JPEGTables tag's marker segments (DQT, DHT) without its SOI and EOI, and the set of them."""
    raw = bytes(ifd.tags.get(TiffTag.JPEG_TABLES, []))
    if raw[:2] != b"\xff\xd8" or raw[-2:] != b"\xff\xd9":
        raise ValueError("no JPEGTables tag")
    body = raw[2:-2]
    segments: Set[bytes] = set()
    markers = set()
    pos = 0
    while pos < len(body):
        if body[pos] != 0xFF or pos + 4 > len(body):
            raise ValueError("bad JPEGTables content")
        end = pos + 2 + struct.unpack(">H", body[pos + 2 : pos + 4])[0]
        markers.add(body[pos + 1])
        segments.add(body[pos:end])
        pos = end
    if not {0xDB, 0xC4} <= markers:
        raise ValueError("JPEGTables lacks quantisation or Huffman tables")
    return body, segments


def join_strips(tiff_path: str, out: str) -> None:
    """Join the JPEG strips of a GDAL-written JPEG-in-TIFF into one baseline JFIF file (see module doc)."""
    main = read_tiff_ifds(tiff_path)[0][0]
    width, height = main.width, main.height
    rows = main.tags.get(TiffTag.ROWS_PER_STRIP, [height])[0]
    offsets, counts = main.data_offsets, main.data_counts
    if main.tiled or not offsets or len(offsets) != -(-height // rows):
        raise ValueError("not a JPEG-in-TIFF with one strip per row band")
    tables, shared = _tables(main)
    with open(tiff_path, "rb") as src, open(out, "wb") as dst:
        frame = scan = b""
        for i, (off, count) in enumerate(zip(offsets, counts)):
            src.seek(off)
            data = src.read(count)
            if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
                raise ValueError(f"strip {i} is not a complete JPEG stream")
            segs, body = _segments(data, 2)
            # A strip may repeat a shared table (IJG libjpeg 9 repeats the Huffman tables in the first
            # strip); anything else (its own tables, a progressive frame, restarts) is not joinable.
            kinds = {m for m, seg_bytes in segs if not (m in (0xC4, 0xDB) and seg_bytes in shared)}
            if kinds != {0xC0, 0xDA} or len(segs) - len(kinds) != sum(m in (0xC4, 0xDB) for m, _ in segs):
                raise ValueError(f"strip {i} has markers {sorted(m for m, _ in segs)}")
            seg = {m: b for m, b in segs if m in (0xC0, 0xDA)}
            if i == 0:
                frame, scan = seg[0xC0], seg[0xDA]
                comps = frame[9]
                vmax = max(frame[11 + 3 * k] & 0x0F for k in range(comps))
                hmax = max(frame[11 + 3 * k] >> 4 for k in range(comps))
                mcu_h, mcu_w = 8 * (vmax if comps > 1 else 1), 8 * (hmax if comps > 1 else 1)
                if rows % mcu_h:
                    raise ValueError(f"{rows} rows per strip is not a multiple of the MCU height {mcu_h}")
                interval = -(-width // mcu_w) * (rows // mcu_h)
                if interval > 0xFFFF:
                    raise ValueError("restart interval too large")
                whole = frame[:5] + struct.pack(">HH", height, width) + frame[9:]
                dst.write(b"\xff\xd8" + _JFIF_APP0 + tables + whole)
                dst.write(b"\xff\xdd" + struct.pack(">HH", 4, interval) + scan)
            elif seg[0xDA] != scan or seg[0xC0][9:] != frame[9:]:
                raise ValueError(f"strip {i} is coded differently from strip 0")
            if i:
                dst.write(bytes((0xFF, 0xD0 + (i - 1) % 8)))
            dst.write(memoryview(data)[body:-2])
        dst.write(b"\xff\xd9")
    if not frame:
        raise ValueError("no strips")
