"""Every environment variable the converter reads, with its default and its doc, and the fixed limits.

GDAL's own configuration options (GDAL_CACHEMAX, GDAL_NUM_THREADS, ...) pass through untouched.
"""

from __future__ import annotations

import os
from typing import Dict, NamedTuple


class Setting(NamedTuple):
    default: str
    doc: str


ENV: Dict[str, Setting] = {
    "COG_PIPELINE_THREADS": Setting("", "threads for compression and overviews (default: OMP_NUM_THREADS, which "
                                        "HTCondor sets to the slot's CPUs, else the CPUs this process may use)"),
    "COG_PIPELINE_MEMORY_BUDGET": Setting("", "MB a conversion may use (default: the HTCondor job ad's RequestMemory, "
                                              "else 1024)"),
    "COG_PIPELINE_PROFILE": Setting("", "profile overrides, NAME=VALUE[,NAME=VALUE] (see profile.py)"),
    "COG_PIPELINE_BAND_MISMATCH": Setting("fail", "'warn': a band-count mismatch exits 0 with a WARNING line"),
    "COG_PIPELINE_VERIFY_SOURCE": Setting("", "'1': the input must be the version --metadata-b64 names (SOURCE_SIZE, "
                                              "and SOURCE_ETAG when it is a plain MD5), else SOURCE_CHANGED; for "
                                              "staging that cannot pin a version (Pegasus' transfers)"),
}


def env(name: str) -> str:
    """The variable's value, else its declared default (KeyError for an undeclared name)."""
    return os.environ.get(name, "").strip() or ENV[name].default


#: JPEG stores width and height in 16 bits.
JPEG_MAX_DIMENSION = 65535
#: Side of the decimated read used to choose the scaling of non-8-bit previews.
STATS_SAMPLE_SIZE = 1024
DEFAULT_MEMORY_BUDGET_MB = 1024
#: GDAL's block cache gets at most this share of the budget (unless GDAL_CACHEMAX is set).
CACHE_SHARE = 8

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
SUPPORTED_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
