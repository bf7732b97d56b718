"""The GDAL bundled in rasterio's wheels (this project's Python environment)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backend import GMF_ALPHA, GMF_PER_DATASET, RasterInfo
from .exit_codes import GdalFailure


def import_rasterio_without_boto3() -> None:
    """Import rasterio without letting it import boto3 (for its AWS sessions, when boto3 is installed).

    The converter opens only local files, and the control plane opens objects through its own ranged opener,
    never through rasterio's AWS sessions; boto3's import costs ~0.3 CPU-s and ~19 MiB of RSS in every pool
    worker and in a scan on folder buckets. boto3 is importable again afterwards (the S3 store needs it)."""
    if "rasterio" in sys.modules or "boto3" in sys.modules:
        return
    sys.modules["boto3"] = None  # type: ignore[assignment] - `import boto3` raises ImportError meanwhile
    try:
        import rasterio  # noqa: F401, PLC0415
    finally:
        if sys.modules.get("boto3", 0) is None:
            del sys.modules["boto3"]


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning and friends
        return fn(*args, **kwargs)


class RasterioBackend:
    name = "rasterio"

    def __init__(self) -> None:
        import_rasterio_without_boto3()
        import rasterio  # noqa: PLC0415
        import rasterio.shutil  # noqa: PLC0415
        from rasterio._env import del_gdal_config, get_gdal_config, set_gdal_config  # noqa: PLC0415
        from rasterio.windows import Window  # noqa: PLC0415

        self.rasterio = rasterio
        self._set, self._get, self._del = set_gdal_config, get_gdal_config, del_gdal_config
        self._window = Window
        self.version = rasterio.__gdal_version__
        self._records: Dict[int, List[str]] = {}
        logging.getLogger("rasterio").addHandler(_ThreadLogCapture(self._records))

    def _call(self, fn: Callable[[], Any]) -> Tuple[Any, List[str]]:
        tid = threading.get_ident()
        self._records[tid] = []
        try:
            return fn(), list(self._records.get(tid, []))
        except Exception as exc:  # rasterio turns every GDAL failure into an exception
            raise GdalFailure(str(exc), self._records.get(tid, [])) from None
        finally:
            self._records.pop(tid, None)

    def _open(self, path: str, drivers: Optional[List[str]] = None) -> Any:
        driver = drivers[0] if drivers and len(drivers) == 1 else None
        return self._call(lambda: _quietly(self.rasterio.open, path, driver=driver))[0]

    def info(self, path: str, drivers: Optional[List[str]] = None, overviews: bool = True) -> RasterInfo:
        with self._open(path, drivers) as ds:
            ovr = []
            if ds.count and overviews:
                for level in range(len(ds.overviews(1))):
                    with _quietly(self.rasterio.open, path, overview_level=level) as o:
                        ovr.append((o.width, o.height))
            has_palette = False
            if ds.count:
                try:
                    ds.colormap(1)
                    has_palette = True
                except ValueError:
                    pass
            return RasterInfo(
                path=path, driver=ds.driver, width=ds.width, height=ds.height, count=ds.count, dtypes=list(ds.dtypes),
                nodata=list(ds.nodatavals), colorinterp=[ci.name.lower() for ci in ds.colorinterp],
                mask_flags=[sum(int(f.value) for f in flags) for flags in ds.mask_flag_enums],
                block_size=(ds.block_shapes[0][1], ds.block_shapes[0][0]) if ds.count else (0, 0),
                overview_sizes=ovr, has_palette=has_palette)

    def create_copy(self, driver: str, src: str, dst: str, options: Dict[str, str]) -> List[str]:
        return self._call(lambda: _quietly(self.rasterio.shutil.copy, src, dst, driver=driver, strict=False,
                                           **options))[1]

    def read(self, path: str, bands: Sequence[int], window: Optional[Tuple[int, int, int, int]] = None,
             out_shape: Optional[Tuple[int, int]] = None, masks: bool = False) -> np.ndarray:
        with self._open(path) as ds:
            win = self._window(*window) if window else None
            h, w = (window[3], window[2]) if window else (ds.height, ds.width)
            shape = (len(bands),) + tuple(out_shape or (h, w))

            def do() -> np.ndarray:
                if masks:
                    return np.stack([ds.read_masks(b, window=win, out_shape=shape[1:]) for b in bands])
                return ds.read(list(bands), window=win, out_shape=shape)

            return self._call(do)[0]

    def checksums(self, path: str) -> Tuple[List[int], List[int]]:
        with self._open(path) as ds:
            sums = [self._call(lambda i=i: ds.checksum(i))[0] for i in range(1, ds.count + 1)]
            msums = []
            for i, flags in enumerate(ds.mask_flag_enums, start=1):
                value = sum(int(f.value) for f in flags)
                if value & GMF_PER_DATASET and not value & GMF_ALPHA:
                    m = self._call(lambda i=i: ds.read_masks(i))[0]
                    msums.append(int(np.count_nonzero(m)) ^ (int(m.astype(np.uint64).sum()) << 1))
            return sums, msums

    def decode_check(self, path: str) -> Tuple[List[str], Tuple[float, float]]:
        """Decode every band at 1/8 scale (for a JPEG, libjpeg's scaled decoding of every block): (GDAL's
        messages, where libjpeg's corrupt-data warnings appear; (min, max) of the decoded samples)."""
        with self._open(path) as ds:
            k = 8 if min(ds.width, ds.height) >= 64 else 1  # a tiny image's 1/8 scale could hide its contrast
            shape = (ds.count, -(-ds.height // k), -(-ds.width // k))
            arr, messages = self._call(lambda: ds.read(out_shape=shape))
            return messages, (float(arr.min()), float(arr.max()))

    def set_config(self, key: str, value: Optional[str]) -> None:
        if value is None:
            self._del(key)
        else:
            self._set(key, value)

    def get_config(self, key: str) -> Optional[str]:
        value = self._get(key)
        return None if value is None else str(value)

    def set_cachemax(self, nbytes: int) -> None:
        self._set("GDAL_CACHEMAX", int(nbytes))  # rasterio calls GDALSetCacheMax64 (bytes)

    def get_cachemax(self) -> int:
        return int(self._get("GDAL_CACHEMAX"))

    def quiet(self) -> None:
        logging.getLogger("rasterio").propagate = False


class _ThreadLogCapture(logging.Handler):
    """Collects rasterio's log records (GDAL warnings and errors) per calling thread."""

    def __init__(self, store: Dict[int, List[str]]):
        super().__init__(level=logging.INFO)
        self.store = store

    def emit(self, record: logging.LogRecord) -> None:
        bucket = self.store.get(record.thread)
        if bucket is not None:
            with contextlib.suppress(Exception):
                bucket.append(record.getMessage())

