"""The GDAL bundled in rasterio's wheels, called through its C API (ctypes): the venv's converter backend.

Why not rasterio's Python API: a local pool worker converts image after image, and what it holds between
jobs counts in every job's peak. Importing rasterio imports numpy and some 30 modules of rasterio, attrs and
click: ~26 MiB of RSS and ~0.2 CPU-s per process (measured, docs/conversion.md), which put a worker's peak
above the whole original ``gdal_translate`` process at 1000² and 2500². The converter needs two dozen
functions of GDAL's stable C API, the ones the osgeo backend calls through GDAL's own bindings; they are
declared here and nothing else. The library is the one rasterio ships (rasterio stays this project's GDAL
distribution) and is loaded without importing rasterio. numpy is imported only where pixels are read into
arrays (non-8-bit previews, ``--verify-pixels``), as on the osgeo backend.

Every call that can fail runs under a GDAL error handler pushed for the calling thread only
(``CPLPushErrorHandlerEx``), so the JPEG thread and the COG thread each collect their own messages.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
from ctypes import POINTER, byref, c_char_p, c_double, c_int, c_int64, c_void_p
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

from .backend import cascade_levels, overview_config
from .exit_codes import GdalFailure
from .rasterinfo import GMF_ALPHA, GMF_PER_DATASET, RasterInfo, numpy_dtype_name

# gdal.h / cpl_error.h
_OF_RASTER = 0x02
_OF_VERBOSE_ERROR = 0x40
_GF_READ = 0
_CE_NONE = 0
_CE_FAILURE = 3
_GDT_BYTE = 1

#: Buffer types for reading into numpy: GDAL's complex integer types have no numpy dtype, so they are read
#: as complex floats (what GDAL's own bindings return for them).
_READ_AS = {"complex_int16": ("CFloat32", "complex64"), "complex_int32": ("CFloat64", "complex128")}

_Handler = ctypes.CFUNCTYPE(None, c_int, c_int, c_char_p)

#: The drivers a conversion uses: GTiff (the input, which inputs.py opens as GTiff only, and every
#: temporary), COG, VRT and JPEG (the preview, its check and GDAL's fallback writer), and MEM (in-memory
#: datasets GDAL's own code makes). Registering these, not all ~200 (GDALAllRegister), keeps every worker
#: ~6 MiB smaller: registration touches each driver's code and metadata (measured: 34 vs 28 MiB after
#: loading). Anything else that loads rasterio in the same process (the rio-cogeo validator) registers the rest.
CONVERTER_DRIVERS = ("GTiff", "COG", "VRT", "JPEG", "MEM")


class _ColorEntry(ctypes.Structure):
    _fields_ = [("c1", ctypes.c_short), ("c2", ctypes.c_short), ("c3", ctypes.c_short), ("c4", ctypes.c_short)]


#: (name, restype, argtypes) of every function this backend calls.
_SIGNATURES: List[Tuple[str, Any, List[Any]]] = [
    ("GDALAllRegister", None, []),
    ("GDALVersionInfo", c_char_p, [c_char_p]),
    ("GDALOpenEx", c_void_p, [c_char_p, ctypes.c_uint, c_void_p, c_void_p, c_void_p]),
    ("GDALClose", None, [c_void_p]),
    ("GDALGetDatasetDriver", c_void_p, [c_void_p]),
    ("GDALGetDriverShortName", c_char_p, [c_void_p]),
    ("GDALGetDriverByName", c_void_p, [c_char_p]),
    ("GDALGetRasterXSize", c_int, [c_void_p]),
    ("GDALGetRasterYSize", c_int, [c_void_p]),
    ("GDALGetRasterCount", c_int, [c_void_p]),
    ("GDALGetRasterBand", c_void_p, [c_void_p, c_int]),
    ("GDALGetProjectionRef", c_char_p, [c_void_p]),
    ("GDALGetGeoTransform", c_int, [c_void_p, POINTER(c_double)]),
    ("GDALGetGCPCount", c_int, [c_void_p]),
    ("GDALGetRasterDataType", c_int, [c_void_p]),
    ("GDALGetDataTypeName", c_char_p, [c_int]),
    ("GDALGetDataTypeByName", c_int, [c_char_p]),
    ("GDALGetRasterNoDataValue", c_double, [c_void_p, POINTER(c_int)]),
    ("GDALGetRasterColorInterpretation", c_int, [c_void_p]),
    ("GDALGetColorInterpretationName", c_char_p, [c_int]),
    ("GDALGetMaskFlags", c_int, [c_void_p]),
    ("GDALGetMaskBand", c_void_p, [c_void_p]),
    ("GDALGetBlockSize", None, [c_void_p, POINTER(c_int), POINTER(c_int)]),
    ("GDALGetOverviewCount", c_int, [c_void_p]),
    ("GDALGetOverview", c_void_p, [c_void_p, c_int]),
    ("GDALGetRasterBandXSize", c_int, [c_void_p]),
    ("GDALGetRasterBandYSize", c_int, [c_void_p]),
    ("GDALGetRasterColorTable", c_void_p, [c_void_p]),
    ("GDALGetColorEntryCount", c_int, [c_void_p]),
    ("GDALGetColorEntry", POINTER(_ColorEntry), [c_void_p, c_int]),
    ("GDALCreateCopy", c_void_p, [c_void_p, c_char_p, c_void_p, c_int, c_void_p, c_void_p, c_void_p]),
    ("GDALCreate", c_void_p, [c_void_p, c_char_p, c_int, c_int, c_int, c_int, c_void_p]),
    ("GDALBuildOverviews", c_int, [c_void_p, c_char_p, c_int, POINTER(c_int), c_int, c_void_p, c_void_p,
                                   c_void_p]),
    ("GDALRegenerateOverviews", c_int, [c_void_p, c_int, POINTER(c_void_p), c_char_p, c_void_p, c_void_p]),
    ("GDALRasterIO", c_int, [c_void_p, c_int, c_int, c_int, c_int, c_int, c_void_p, c_int, c_int, c_int,
                             c_int, c_int]),
    ("GDALDatasetRasterIO", c_int, [c_void_p, c_int, c_int, c_int, c_int, c_int, c_void_p, c_int, c_int, c_int,
                                    c_int, POINTER(c_int), c_int, c_int, c_int]),
    ("GDALChecksumImage", c_int, [c_void_p, c_int, c_int, c_int, c_int]),
    ("GDALSetCacheMax64", None, [c_int64]),
    ("GDALGetCacheMax64", c_int64, []),
    ("CPLSetConfigOption", None, [c_char_p, c_char_p]),
    ("CPLGetConfigOption", c_char_p, [c_char_p, c_char_p]),
    ("CPLSetThreadLocalConfigOption", None, [c_char_p, c_char_p]),
    ("CPLGetThreadLocalConfigOption", c_char_p, [c_char_p, c_char_p]),
    ("CPLPushErrorHandlerEx", None, [_Handler, c_void_p]),
    ("CPLPopErrorHandler", None, []),
    ("CPLSetErrorHandler", c_void_p, [c_void_p]),
    ("OSRSetPROJSearchPaths", None, [c_void_p]),
]


def _rasterio_dir() -> str:
    """rasterio's package folder, found without importing rasterio (whose import is the cost avoided)."""
    spec = importlib.util.find_spec("rasterio")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("rasterio is not installed")
    return list(spec.submodule_search_locations)[0]


def _load_library(package: str) -> ctypes.CDLL:
    """rasterio's libgdal. On Linux its wheels keep the library and its dependencies in ``rasterio.libs``
    with the search path (RPATH) only on rasterio's extension modules, so one of those is mapped first
    (dlopen, never imported: no module code runs) to bring in the dependencies; then libgdal itself."""
    if sys.platform == "darwin":
        found = sorted(glob.glob(os.path.join(package, ".dylibs", "libgdal*.dylib")))
        if not found:
            raise ImportError(f"no libgdal in {package}/.dylibs")
        return ctypes.CDLL(found[0])
    found = sorted(glob.glob(os.path.join(package + ".libs", "libgdal*.so*")))
    extensions = sorted(glob.glob(os.path.join(package, "_env*.so")) + glob.glob(os.path.join(package, "_base*.so")))
    if not found or not extensions:
        raise ImportError(f"no libgdal in {package}.libs")
    try:
        ctypes.CDLL(extensions[0])
        return ctypes.CDLL(found[0])
    except OSError as exc:
        raise ImportError(f"cannot load rasterio's libgdal: {exc}") from None


def _declare(lib: ctypes.CDLL) -> None:
    for name, restype, argtypes in _SIGNATURES:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise ImportError(f"rasterio's libgdal has no {name}") from None
        fn.restype, fn.argtypes = restype, argtypes


def _text(value: Optional[bytes]) -> str:
    return "" if value is None else value.decode("utf-8", "replace")


def _csl(items: Sequence[str]) -> Any:
    """A NULL-terminated ``char **`` for GDAL's option lists (the caller keeps it alive during the call)."""
    return (c_char_p * (len(items) + 1))(*[os.fsencode(s) for s in items], None)


class LibgdalBackend:
    """rasterio's libgdal through its C API, without rasterio's Python layer (see the module docstring)."""

    name = "libgdal"
    #: GDALRegenerateOverviews makes any level at its exact size, odd sizes included (as on osgeo).
    can_cascade_overviews = True
    regenerates_exact_sizes = True

    def __init__(self) -> None:
        package = _rasterio_dir()
        lib = _load_library(package)
        _declare(lib)
        self.lib = lib
        self._register(lib)
        self._data_paths(package)
        self.version = _text(lib.GDALVersionInfo(b"RELEASE_NAME"))
        self._quiet_handler = ctypes.cast(lib.CPLQuietErrorHandler, c_void_p)

    @staticmethod
    def _register(lib: ctypes.CDLL) -> None:
        """Register CONVERTER_DRIVERS (each once: GDAL ignores a second registration); all of them where this
        libgdal lacks one of the functions."""
        try:
            functions = [getattr(lib, f"GDALRegister_{name}") for name in CONVERTER_DRIVERS]
        except AttributeError:
            lib.GDALAllRegister()
            return
        for register in functions:
            register.restype, register.argtypes = None, []
            register()

    def _data_paths(self, package: str) -> None:
        """Point GDAL and PROJ at the data rasterio ships with its library, unless the environment already
        says where they are (what rasterio does when it is imported)."""
        lib = self.lib
        gdal_data = os.path.join(package, "gdal_data")
        if not os.environ.get("GDAL_DATA") and not lib.CPLGetConfigOption(b"GDAL_DATA", None) \
                and os.path.isdir(gdal_data):
            lib.CPLSetConfigOption(b"GDAL_DATA", os.fsencode(gdal_data))
        proj_data = os.path.join(package, "proj_data")
        if not (os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB")) and os.path.isdir(proj_data):
            paths = _csl([proj_data])
            lib.OSRSetPROJSearchPaths(paths)

    # -- calls and datasets -----------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Tuple[Any, List[str]]:
        """``fn()`` under this thread's own error handler: its result and GDAL's messages; GdalFailure when
        GDAL reported a failure (as the osgeo backend does)."""
        messages: List[str] = []
        failed: List[str] = []

        def collect(err_class: int, err_no: int, msg: Optional[bytes]) -> None:
            text = _text(msg)
            messages.append(text)
            if err_class >= _CE_FAILURE:
                failed.append(text)

        handler = _Handler(collect)
        self.lib.CPLPushErrorHandlerEx(handler, None)
        try:
            result = fn()
        finally:
            self.lib.CPLPopErrorHandler()
        if failed:
            raise GdalFailure(failed[-1], messages)
        return result, messages

    @contextmanager
    def _dataset(self, path: str, drivers: Optional[List[str]] = None) -> Iterator[int]:
        """An open read-only dataset handle, closed on exit."""
        allowed = _csl(drivers) if drivers else None
        flags = _OF_RASTER | _OF_VERBOSE_ERROR
        ds, messages = self._call(lambda: self.lib.GDALOpenEx(os.fsencode(path), flags, allowed, None, None))
        if not ds:
            raise GdalFailure.after(messages, f"GDAL cannot open {path}")
        try:
            yield ds
        finally:
            self._close(ds)

    def _close(self, ds: int) -> None:
        """Close a dataset; a failure while flushing (a full disk) is a GdalFailure like any other."""
        self._call(lambda: self.lib.GDALClose(ds))

    def _driver(self, name: str) -> int:
        drv = self.lib.GDALGetDriverByName(name.encode())
        if not drv:
            raise GdalFailure(f"GDAL has no {name} driver")
        return int(drv)

    # -- what a raster is -------------------------------------------------------------------------------

    def info(self, path: str, drivers: Optional[List[str]] = None, overviews: bool = True) -> RasterInfo:
        lib = self.lib
        with self._dataset(path, drivers) as ds:
            bands = [lib.GDALGetRasterBand(ds, i + 1) for i in range(lib.GDALGetRasterCount(ds))]
            b1 = bands[0] if bands else None
            ovr = []
            if b1 and overviews:
                for i in range(lib.GDALGetOverviewCount(b1)):
                    o = lib.GDALGetOverview(b1, i)
                    ovr.append((lib.GDALGetRasterBandXSize(o), lib.GDALGetRasterBandYSize(o)))
            block = (0, 0)
            if b1:
                bx, by = c_int(), c_int()
                lib.GDALGetBlockSize(b1, byref(bx), byref(by))
                block = (bx.value, by.value)
            gt = (c_double * 6)()
            has_gt = self._call(lambda: lib.GDALGetGeoTransform(ds, gt))[0] == _CE_NONE
            return RasterInfo(
                path=path,
                driver=_text(lib.GDALGetDriverShortName(lib.GDALGetDatasetDriver(ds))),
                width=lib.GDALGetRasterXSize(ds),
                height=lib.GDALGetRasterYSize(ds),
                count=len(bands),
                dtypes=[numpy_dtype_name(_text(lib.GDALGetDataTypeName(lib.GDALGetRasterDataType(b)))) for b in bands],
                nodata=[self._nodata(b) for b in bands],
                colorinterp=[_text(lib.GDALGetColorInterpretationName(lib.GDALGetRasterColorInterpretation(b))).lower()
                             for b in bands],
                mask_flags=[lib.GDALGetMaskFlags(b) for b in bands],
                block_size=block,
                overview_sizes=ovr,
                has_palette=bool(b1 and lib.GDALGetRasterColorTable(b1)),
                georeferenced=bool(_text(lib.GDALGetProjectionRef(ds)) or has_gt or lib.GDALGetGCPCount(ds)),
            )

    def _nodata(self, band: int) -> Optional[float]:
        ok = c_int(0)
        value = self.lib.GDALGetRasterNoDataValue(band, byref(ok))
        return float(value) if ok.value else None

    def palette(self, path: str) -> List[Tuple[int, int, int, int]]:
        lib = self.lib
        with self._dataset(path) as ds:
            ct = lib.GDALGetRasterColorTable(lib.GDALGetRasterBand(ds, 1))
            if not ct:
                return []
            entries = [lib.GDALGetColorEntry(ct, i).contents for i in range(lib.GDALGetColorEntryCount(ct))]
            return [(e.c1, e.c2, e.c3, e.c4) for e in entries]

    # -- writing ----------------------------------------------------------------------------------------

    def create_copy(self, driver: str, src: str, dst: str, options: Dict[str, str]) -> List[str]:
        drv = self._driver(driver)
        opts = _csl([f"{k}={v}" for k, v in options.items()])
        with self._dataset(src) as src_ds:
            out, messages = self._call(lambda: self.lib.GDALCreateCopy(drv, os.fsencode(dst), src_ds, 0, opts,
                                                                      None, None))
            if not out:
                raise GdalFailure.after(messages, f"{driver} CreateCopy failed")
            messages += self._call(lambda: self.lib.GDALClose(out))[1]
        return messages

    def cascade_overviews(self, src: str, dims: Sequence[Tuple[int, int]], prefix: str, resampling: str,
                          creation: Dict[str, str], threads: str, temps: List[str]) -> List[str]:
        """The COG driver's overview pyramid of ``src`` (sizes ``dims``, largest first), each level from the
        one before, into compressed tiled GTiffs named ``prefix...`` (each appended to ``temps`` before it is
        created); the same steps as the osgeo backend's: a level of exactly half an even-sized level by
        GDAL's multi-band overview builder (the COG driver's own code) into an external .ovr of a VRT,
        compressed directly; any other level at its exact size by GDALRegenerateOverviews, then compressed."""
        with self._thread_config(overview_config(creation, threads)):
            first = prefix + "src.vrt"
            temps.append(first)
            self.create_copy("VRT", src, first, {})
            with self._dataset(src) as ds:
                size = (self.lib.GDALGetRasterXSize(ds), self.lib.GDALGetRasterYSize(ds))
                count = self.lib.GDALGetRasterCount(ds)
                dtype = self.lib.GDALGetRasterDataType(self.lib.GDALGetRasterBand(ds, 1))

            def regenerate(prev: str, exact: Tuple[int, int], k: int) -> str:
                return self._regenerate_level(prev, exact, count, dtype, f"{prefix}ovr{k}", resampling, creation,
                                              temps)

            return cascade_levels(first, size, dims, lambda prev: self._halve_level(prev, resampling, temps),
                                  regenerate)

    @contextmanager
    def _thread_config(self, values: Dict[str, Optional[str]]) -> Iterator[None]:
        """GDAL config options for this thread only while the block runs (the JPEG thread keeps its own)."""
        lib = self.lib
        saved = {k: lib.CPLGetThreadLocalConfigOption(k.encode(), None) for k in values}
        for k, v in values.items():
            lib.CPLSetThreadLocalConfigOption(k.encode(), None if v is None else v.encode())
        try:
            yield
        finally:
            for k, old in saved.items():
                lib.CPLSetThreadLocalConfigOption(k.encode(), old)

    def _halve_level(self, prev: str, resampling: str, temps: List[str]) -> str:
        out = prev + ".ovr"
        temps.append(out)
        factor = (c_int * 1)(2)
        with self._dataset(prev) as ds:
            err, messages = self._call(lambda: self.lib.GDALBuildOverviews(ds, resampling.encode(), 1, factor, 0,
                                                                          None, None, None))
        if err != _CE_NONE:
            raise GdalFailure.after(messages, "overview computation failed")
        return out

    def _regenerate_level(self, prev: str, size: Tuple[int, int], count: int, dtype: int, stem: str,
                          resampling: str, creation: Dict[str, str], temps: List[str]) -> str:
        lib = self.lib
        raw, out = f"{stem}raw.tif", f"{stem}.tif"
        w, h = size
        temps.extend([raw, out])
        opts = _csl(["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "INTERLEAVE=BAND", "BIGTIFF=IF_NEEDED"])
        gtiff = self._driver("GTiff")
        with self._dataset(prev) as src_ds:
            dst, messages = self._call(lambda: lib.GDALCreate(gtiff, os.fsencode(raw), w, h, count, dtype, opts))
            if not dst:
                raise GdalFailure.after(messages, f"cannot create {raw}")
            try:
                for b in range(1, count + 1):
                    target = (c_void_p * 1)(lib.GDALGetRasterBand(dst, b))
                    err, messages = self._call(lambda b=b, target=target: lib.GDALRegenerateOverviews(
                        lib.GDALGetRasterBand(src_ds, b), 1, target, resampling.encode(), None, None))
                    if err != _CE_NONE:
                        raise GdalFailure.after(messages, "overview computation failed")
            finally:
                self._close(dst)
        self.create_copy("GTiff", raw, out, creation)
        os.remove(raw)
        return out

    # -- reading pixels ---------------------------------------------------------------------------------

    def read(self, path: str, bands: Sequence[int], window: Optional[Tuple[int, int, int, int]] = None,
             out_shape: Optional[Tuple[int, int]] = None, masks: bool = False) -> np.ndarray:
        import numpy as np  # noqa: PLC0415 - only where pixels are read (uint8 conversions never import it)

        lib = self.lib
        with self._dataset(path) as ds:
            xoff, yoff, w, h = window or (0, 0, lib.GDALGetRasterXSize(ds), lib.GDALGetRasterYSize(ds))
            bh, bw = out_shape or (h, w)
            arrays = []
            for b in bands:
                band = lib.GDALGetRasterBand(ds, b)
                if not band:
                    raise GdalFailure(f"{path} has no band {b}")
                if masks:
                    band = lib.GDALGetMaskBand(band)
                    gdt, dtype = _GDT_BYTE, "uint8"
                else:
                    name = numpy_dtype_name(_text(lib.GDALGetDataTypeName(lib.GDALGetRasterDataType(band))))
                    gdal_name, dtype = _READ_AS.get(name, (None, name))
                    gdt = lib.GDALGetDataTypeByName(gdal_name.encode()) if gdal_name else lib.GDALGetRasterDataType(band)
                arr = np.empty((bh, bw), dtype=dtype)
                err, _ = self._call(lambda band=band, arr=arr, gdt=gdt: lib.GDALRasterIO(
                    band, _GF_READ, xoff, yoff, w, h, arr.ctypes.data_as(c_void_p), bw, bh, gdt, 0, 0))
                if err != _CE_NONE:
                    raise GdalFailure(f"cannot read band {b} of {path}")
                arrays.append(arr)
            return np.stack(arrays)

    def read_interleaved(self, path: str, bands: int) -> Tuple[int, int, bytearray]:
        lib = self.lib
        with self._dataset(path) as ds:
            w, h = lib.GDALGetRasterXSize(ds), lib.GDALGetRasterYSize(ds)
            pixels = bytearray(w * h * bands)
            band_map = (c_int * bands)(*range(1, bands + 1))
            target = (ctypes.c_char * len(pixels)).from_buffer(pixels)
            err, _ = self._call(lambda: lib.GDALDatasetRasterIO(ds, _GF_READ, 0, 0, w, h, target, w, h, _GDT_BYTE,
                                                                bands, band_map, bands, w * bands, 1))
            if err != _CE_NONE:
                raise GdalFailure(f"cannot read {path}")
            return w, h, pixels

    def checksums(self, path: str) -> Tuple[List[int], List[int]]:
        lib = self.lib
        with self._dataset(path) as ds:
            sums, msums = [], []
            for i in range(lib.GDALGetRasterCount(ds)):
                band = lib.GDALGetRasterBand(ds, i + 1)
                sums.append(self._checksum(band)[0])
                flags = lib.GDALGetMaskFlags(band)
                if flags & GMF_PER_DATASET and not flags & GMF_ALPHA:
                    msums.append(self._checksum(lib.GDALGetMaskBand(band))[0])
            return sums, msums

    def _checksum(self, band: int) -> Tuple[int, List[str]]:
        """GDAL's checksum of a whole band (decoding every block) and the messages it gave on the way."""
        lib = self.lib
        w, h = lib.GDALGetRasterBandXSize(band), lib.GDALGetRasterBandYSize(band)
        value, messages = self._call(lambda: lib.GDALChecksumImage(band, 0, 0, w, h))
        return int(value), messages

    def decode_check(self, path: str) -> List[str]:
        """Decode band 1 at its smallest overview (a JPEG's 1/8 scale still entropy-decodes every block), in
        C; GDAL's messages, where libjpeg's corrupt-data warnings appear (GdalFailure if it does not decode)."""
        lib = self.lib
        with self._dataset(path) as ds:
            band = lib.GDALGetRasterBand(ds, 1)
            n = lib.GDALGetOverviewCount(band)
            return self._checksum(lib.GDALGetOverview(band, n - 1) if n else band)[1]

    # -- configuration ----------------------------------------------------------------------------------

    def set_config(self, key: str, value: Optional[str]) -> None:
        self.lib.CPLSetConfigOption(key.encode(), None if value is None else value.encode())

    def get_config(self, key: str) -> Optional[str]:
        value = self.lib.CPLGetConfigOption(key.encode(), None)
        return None if value is None else _text(value)

    def set_cachemax(self, nbytes: int) -> None:
        self.lib.GDALSetCacheMax64(int(nbytes))

    def get_cachemax(self) -> int:
        return int(self.lib.GDALGetCacheMax64())

    def quiet(self) -> None:
        """Send GDAL's messages nowhere outside this backend's own handlers (the CLI prints one line)."""
        self.lib.CPLSetErrorHandler(self._quiet_handler)
