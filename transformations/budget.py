"""The memory a conversion may use: the HTCondor slot's request when run in one, else 1 GB.

A converter that grows past its slot's memory is held or killed, so the budget sizes GDAL's block cache (unless
GDAL_CACHEMAX is set) and chooses the JPEG writer (jpeg.py)."""

from __future__ import annotations

import os
import re
from typing import Optional

from .settings import CACHE_SHARE, DEFAULT_MEMORY_BUDGET_MB, env

_AD_ATTRS = ("RequestMemory", "MachineAttrMemory0", "MemoryProvisioned")


def condor_memory_mb(job_ad: Optional[str] = None) -> Optional[int]:
    """The slot's memory in MB from the job ad HTCondor names in ``_CONDOR_JOB_AD``, if a plain number."""
    path = job_ad or os.environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return None
    for attr in _AD_ATTRS:  # RequestMemory first: what the job asked for and is held against
        found = re.search(rf"^\s*{attr}\s*=\s*(\d+)\s*$", text, re.MULTILINE | re.IGNORECASE)
        if found and int(found.group(1)) > 0:
            return int(found.group(1))
    return None


def memory_budget_mb(explicit: Optional[int] = None) -> int:
    """``--memory-budget``, else env ``COG_PIPELINE_MEMORY_BUDGET``, else the HTCondor slot's, else 1024."""
    if explicit:
        return int(explicit)
    value = env("COG_PIPELINE_MEMORY_BUDGET")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return condor_memory_mb() or DEFAULT_MEMORY_BUDGET_MB


def cache_cap_mb(budget_mb: int) -> int:
    """The block cache (MB) the budget allows; never below 8 MB, GDAL's working minimum here."""
    return max(8, budget_mb // CACHE_SHARE)
