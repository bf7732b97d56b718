"""Provenance (``KEY=VALUE`` pairs) in the COG's GDAL metadata, domain ``COG_PIPELINE``.

The pairs are set before the COG driver's CreateCopy, on the VRT the COG is copied from. GDAL before 3.8 carries
only the source's default metadata domain into a GeoTIFF (there is no ``SRC_MDD``), so the VRT holds one
default-domain item whose value is a run of ``_`` exactly as long as the finished items; after the copy that item's
bytes in the ``GDAL_METADATA`` tag are overwritten, same length, by the items in their domain. No TIFF structure is
parsed or moved, so classic and BigTIFF COGs alike keep the driver's layout, tiles and offsets.
"""

from __future__ import annotations

import mmap
from typing import Dict

from .xmltext import escape

#: The metadata domain the converter's provenance lives in.
PROVENANCE_DOMAIN = "COG_PIPELINE"
SLOT_NAME = "COG_PIPELINE_SLOT"


def items_xml(items: Dict[str, str], domain: str = PROVENANCE_DOMAIN) -> bytes:
    """The items as GDAL writes them in GDAL_METADATA (a value is escaped twice: GDAL unescapes twice)."""
    return b"".join(
        f'<Item name="{escape(k, quote=True)}" domain="{domain}">{escape(escape(v, quote=True))}</Item>'.encode()
        for k, v in items.items())


def slot_vrt_metadata(items: Dict[str, str]) -> str:
    """The VRT's ``<Metadata>`` element holding the slot for ``items``."""
    return f'<Metadata><MDI key="{SLOT_NAME}">{"_" * len(items_xml(items))}</MDI></Metadata>'


def fill_slot(path: str, items: Dict[str, str]) -> None:
    """Overwrite the slot in the GeoTIFF at ``path`` with ``items``; ValueError if the slot is not found."""
    new = items_xml(items)
    slot = f'<Item name="{SLOT_NAME}">'.encode() + b"_" * len(new) + b"</Item>"
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        at = mm.find(slot)
        if at < 0:
            raise ValueError("the metadata slot is not in the COG")
        mm[at:at + len(slot)] = new + b" " * (len(slot) - len(new))
        mm.flush()
