"""Find many keys in a bucket with few requests: list shared prefixes instead of asking once per key.

Both the pre-flight check (which inputs exist) and reconcile (which outputs exist) need to know about
thousands of keys. The original tool listed the whole output bucket once per row; here a manifest costs
about one paginated listing per 1000 objects under the folders it touches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime

from cog_pipeline.storage.store import ObjectInfo, ObjectStore

# Listing each folder separately costs at least one request per folder; past this many folders, listings of
# a few shared parent prefixes are cheaper unless those hold vastly more than the manifest touches.
MAX_FOLDER_LISTINGS = 10


def folder_of(key: str) -> str:
    folder, sep, _ = key.rpartition("/")
    return folder + sep


def plan_prefixes(keys: Iterable[str], max_listings: int = MAX_FOLDER_LISTINGS) -> list[str]:
    """The prefixes to list so that every key is covered, with at most max_listings prefixes."""
    if max_listings < 1:
        raise ValueError(f"max_listings must be at least 1, not {max_listings}")
    folders = sorted({folder_of(k) for k in keys})
    if not folders:
        return []
    # A folder inside another listed folder is covered by it.
    covered: list[str] = []
    for folder in folders:
        if not covered or not folder.startswith(covered[-1]):
            covered.append(folder)
    if len(covered) <= max_listings:
        return covered
    # Too many folders: group them by their first `depth` path segments, as deep as the budget allows, so
    # counties spread over two states cost two listings, not one listing of the whole bucket.
    deepest = max(folder.count("/") for folder in covered)
    for depth in range(deepest - 1, -1, -1):
        groups: dict[str, list[str]] = {}
        for folder in covered:
            groups.setdefault("/".join(folder.split("/")[:depth]), []).append(folder)
        if len(groups) <= max_listings:
            return sorted(os.path.commonprefix(members) for members in groups.values())
    return [os.path.commonprefix(covered)]


def find_keys(store: ObjectStore, keys: Iterable[str], max_listings: int = MAX_FOLDER_LISTINGS) -> dict[str, ObjectInfo]:
    """Info for each of `keys` that exists in the store; absent keys are simply missing from the result."""
    wanted = set(keys)
    found: dict[str, ObjectInfo] = {}
    for prefix in plan_prefixes(wanted, max_listings):
        for info in store.list(prefix):
            if info.key in wanted:
                found[info.key] = info
    return found


def written_since(obj: ObjectInfo, claimed_at: datetime | None) -> bool:
    """The object was written after the claim (to the second: some stores keep no finer time)."""
    return claimed_at is None or obj.last_modified.replace(microsecond=0) >= claimed_at.replace(microsecond=0)
