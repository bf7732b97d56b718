"""Ranged reads of one object, on any ObjectStore: how the report and `provenance` look inside a COG
without downloading it.

A COG keeps its header, metadata and smallest overview at the front, so a few tens of KiB answer "what
made this file" and "what does it look like". S3 answers `GetObject` with a `Range`; a folder bucket is
read with seek. Everything else falls back to one full read (correct, never cheap). `RangedFile` wraps
this as the seekable file object rasterio's `opener=` hands to GDAL, so GDAL's own TIFF reader decides
which bytes it needs and we never hand-parse tiles.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from cog_pipeline.storage.store import ObjectNotFound, ObjectStore, StoreError

BLOCK = 64 * 1024  # one request per 64 KiB: a COG's header and its smallest overview usually fit in one or two


def read_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of the object (fewer at its end). One request on S3 and on folders."""
    if length <= 0:
        return b""
    client = getattr(store, "client", None)
    if client is not None:  # S3Store
        try:
            resp = client.get_object(Bucket=store.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
            return resp["Body"].read()
        except Exception as exc:  # noqa: BLE001 - one clear error type for callers
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise store._error(exc, key) from exc  # type: ignore[attr-defined]
    base = getattr(store, "base", None)
    if isinstance(base, Path):  # LocalStore: its own key validation, then seek
        path = store._path(key)  # type: ignore[attr-defined]
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{store.where(key)} does not exist") from exc
    data, _ = store.read_bytes(key)
    return data[start : start + length]


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over one object, fetching aligned 64 KiB blocks on demand and caching them."""

    def __init__(self, store: ObjectStore, key: str, size: int | None = None, blocks: _Blocks | None = None) -> None:
        super().__init__()
        self.store, self.key = store, key
        if size is None:
            info = store.head(key)
            if info is None:
                raise ObjectNotFound(f"{store.where(key)} does not exist")
            size = info.size
        self.size = size
        self.pos = 0
        self.cache = blocks if blocks is not None else _Blocks()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block(self, index: int) -> bytes:
        cache = self.cache
        if index not in cache.data:
            data = read_range(self.store, self.key, index * BLOCK, BLOCK)
            cache.requests += 1
            cache.bytes_fetched += len(data)
            cache.data[index] = data
        return cache.data[index]

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        out = bytearray()
        while self.pos < end:
            block = self._block(self.pos // BLOCK)
            offset = self.pos % BLOCK
            chunk = block[offset : offset + (end - self.pos)]
            if not chunk:
                break
            out += chunk
            self.pos += len(chunk)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Blocks:
    """The fetched blocks of one object, shared by every file GDAL opens on it (it opens more than once)."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.requests = 0
        self.bytes_fetched = 0


OPEN_NAME = "object.tif"  # the one name the opener serves: never derived from the key


def opener_for(store: ObjectStore, key: str, size: int | None = None) -> tuple[Any, _Blocks]:
    """(opener, stats) for `rasterio.open(OPEN_NAME, opener=opener)`: GDAL then reads the object by ranges.

    Only OPEN_NAME exists: GDAL's probes for side-car files (.ovr, .aux.xml, .msk) find nothing instead of
    reading the whole object again under another name. `stats` counts requests and bytes.
    """
    from rasterio.abc import FileContainer

    if size is None:
        info = store.head(key)
        if info is None:
            raise ObjectNotFound(f"{store.where(key)} does not exist")
        size = info.size
    blocks = _Blocks()

    class _Container(FileContainer):  # type: ignore[misc]
        def open(self, path: str, mode: str = "rb", **_: Any) -> RangedFile:
            if not self.isfile(path):
                raise FileNotFoundError(path)
            if "r" not in mode:
                raise StoreError("ranged objects are read-only")
            return RangedFile(store, key, size, blocks)

        def isfile(self, path: str) -> bool:
            return str(path).rpartition("/")[2] == OPEN_NAME

        def isdir(self, path: str) -> bool:
            return False

        def ls(self, path: str) -> list[str]:
            return []

        def mtime(self, path: str) -> int:
            return 0

        def rm(self, path: str) -> None:
            raise StoreError("ranged objects are read-only")

        def size(self, path: str) -> int:
            return int(size)

    return _Container(), blocks
