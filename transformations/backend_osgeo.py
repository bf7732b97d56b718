"""GDAL's own Python bindings (``osgeo.gdal``), as in the stock GDAL containers.

The only backend that can compute the COG driver's overview pyramid with explicit sizes
(``GDALRegenerateOverviews``), which the parallel COG path needs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

from .backend import cascade_levels, overview_config
from .exit_codes import GdalFailure
from .rasterinfo import GMF_ALPHA, GMF_PER_DATASET, RasterInfo, numpy_dtype_name

class OsgeoBackend:
    """GDAL's own Python bindings (the stock GDAL containers)."""

    name = "osgeo"

    def __init__(self) -> None:
        from osgeo import gdal  # noqa: PLC0415

        self.gdal = gdal
        self.version = gdal.VersionInfo("RELEASE_NAME")

    def _call(self, fn: Callable[[], Any]) -> Tuple[Any, List[str]]:
        gdal = self.gdal
        messages: List[str] = []
        failed = []

        def handler(err_class: int, err_no: int, msg: str) -> None:
            messages.append(str(msg))
            if err_class >= 3:
                failed.append(msg)

        gdal.PushErrorHandler(handler)
        try:
            try:
                result = fn()
            except RuntimeError as exc:  # when the host process enabled gdal.UseExceptions()
                raise GdalFailure(str(exc), messages) from None
        finally:
            gdal.PopErrorHandler()
        if failed:
            raise GdalFailure(failed[-1], messages)
        return result, messages

    def _open(self, path: str, drivers: Optional[List[str]] = None) -> Any:
        gdal = self.gdal

        def do() -> Any:
            if drivers:
                return gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=drivers)
            return gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)

        ds, messages = self._call(do)
        if ds is None:
            raise GdalFailure.after(messages, f"GDAL cannot open {path}")
        return ds

    def info(self, path: str, drivers: Optional[List[str]] = None, overviews: bool = True) -> RasterInfo:
        gdal = self.gdal
        ds = self._open(path, drivers)
        bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
        b1 = bands[0] if bands else None
        ovr = []
        if b1 is not None and overviews:
            for i in range(b1.GetOverviewCount()):
                o = b1.GetOverview(i)
                ovr.append((o.XSize, o.YSize))
        gt = ds.GetGeoTransform(can_return_null=True)
        return RasterInfo(
            path=path,
            driver=ds.GetDriver().ShortName,
            width=ds.RasterXSize,
            height=ds.RasterYSize,
            count=ds.RasterCount,
            dtypes=[numpy_dtype_name(gdal.GetDataTypeName(b.DataType)) for b in bands],
            nodata=[b.GetNoDataValue() for b in bands],
            colorinterp=[gdal.GetColorInterpretationName(b.GetColorInterpretation()).lower() for b in bands],
            mask_flags=[b.GetMaskFlags() for b in bands],
            block_size=tuple(b1.GetBlockSize()) if b1 is not None else (0, 0),
            overview_sizes=ovr,
            has_palette=bool(b1 is not None and b1.GetColorTable() is not None),
            georeferenced=bool(ds.GetProjection() or gt is not None or ds.GetGCPCount()),
        )

    def palette(self, path: str) -> List[Tuple[int, int, int, int]]:
        ds = self._open(path)
        ct = ds.GetRasterBand(1).GetColorTable()
        return [tuple(ct.GetColorEntry(i)) for i in range(ct.GetCount())] if ct else []

    def create_copy(self, driver: str, src: str, dst: str, options: Dict[str, str]) -> List[str]:
        gdal = self.gdal
        src_ds = self._open(src)
        drv = gdal.GetDriverByName(driver)
        if drv is None:
            raise GdalFailure(f"GDAL has no {driver} driver")
        opts = [f"{k}={v}" for k, v in options.items()]

        def do() -> Any:
            out = drv.CreateCopy(dst, src_ds, 0, options=opts)
            if out is None:
                return None
            out.FlushCache()
            out = None  # noqa: F841  (closes and flushes the file)
            return True

        ok, messages = self._call(do)
        if not ok:
            raise GdalFailure.after(messages, f"{driver} CreateCopy failed")
        return messages

    #: GDALRegenerateOverviews makes any level at its exact size, odd sizes included.
    can_cascade_overviews = True
    regenerates_exact_sizes = True

    def cascade_overviews(
        self,
        src: str,
        dims: Sequence[Tuple[int, int]],
        prefix: str,
        resampling: str,
        creation: Dict[str, str],
        threads: str,
        temps: List[str],
    ) -> List[str]:
        """Compute the COG driver's overview pyramid of ``src`` (sizes ``dims``, largest first),
        each level from the one before, as the COG driver does, into compressed tiled GTiffs
        (``creation`` options); returns their paths (all named ``prefix...``, to be deleted
        by the caller).

        A level of exactly half the size of the level before (both sides even) is made by
        GDAL's multi-band overview builder, the very code the COG driver runs, writing the
        compressed tiles directly (an external .ovr of a VRT over the source / of the level
        before). Every file it creates is first appended to ``temps``. A level whose previous side is odd (the COG driver rounds sizes down, the
        overview builder would round up) is made band by band with GDALRegenerateOverviews
        into an uncompressed file of the exact size, then compressed."""
        saved = self._set_thread_local(overview_config(creation, threads))
        try:
            prev = prefix + "src.vrt"
            temps.append(prev)
            self._call(lambda: self.gdal.Translate(prev, self._open(src), format="VRT"))
            src_ds = self._open(src)
            pw, ph = src_ds.RasterXSize, src_ds.RasterYSize
            count, dtype = src_ds.RasterCount, src_ds.GetRasterBand(1).DataType
            src_ds = None
            return cascade_levels(
                prev, (pw, ph), dims, lambda p: self._halve_level(p, resampling, temps),
                lambda p, size, k: self._regenerate_level(p, size, count, dtype, f"{prefix}ovr{k}", resampling,
                                                          creation, temps))
        finally:
            self._set_thread_local(saved)

    def _set_thread_local(self, values: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
        """Set GDAL config options for this thread only (the JPEG thread keeps its own); returns the old values."""
        gdal = self.gdal
        saved = {k: gdal.GetThreadLocalConfigOption(k, None) for k in values}
        for k, v in values.items():
            gdal.SetThreadLocalConfigOption(k, v)
        return saved

    def _halve_level(self, prev: str, resampling: str, temps: List[str]) -> str:
        """The level of half ``prev``'s size, by GDAL's overview builder (the COG driver's own code)
        into the external ``prev.ovr``, compressed directly; returns its path."""
        out = prev + ".ovr"
        temps.append(out)
        ds = self._open(prev)

        def build(ds: Any = ds) -> Any:
            return ds.BuildOverviews(resampling, [2]) == 0

        ok, messages = self._call(build)
        ds = None
        if not ok:
            raise GdalFailure.after(messages, "overview computation failed")
        return out

    def _regenerate_level(self, prev: str, size: Tuple[int, int], count: int, dtype: int, stem: str,
                          resampling: str, creation: Dict[str, str], temps: List[str]) -> str:
        """A level of exactly ``size`` (the overview builder would round an odd side up), band by band
        with GDALRegenerateOverviews into ``stem``raw.tif, then compressed into ``stem``.tif."""
        gdal = self.gdal
        raw, out = f"{stem}raw.tif", f"{stem}.tif"
        w, h = size
        temps.extend([raw, out])
        src_ds = self._open(prev)
        drv = gdal.GetDriverByName("GTiff")
        opts = ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "INTERLEAVE=BAND", "BIGTIFF=IF_NEEDED"]

        def regen(src_ds: Any = src_ds, raw: str = raw, w: int = w, h: int = h) -> Any:
            ds = drv.Create(raw, w, h, count, dtype, options=opts)
            if ds is None:
                return None
            for b in range(1, count + 1):
                err = gdal.RegenerateOverviews(src_ds.GetRasterBand(b), [ds.GetRasterBand(b)], resampling)
                if err not in (0, None):
                    return None
            ds.FlushCache()
            return True

        ok, messages = self._call(regen)
        src_ds = None
        if not ok:
            raise GdalFailure.after(messages, "overview computation failed")
        self.create_copy("GTiff", raw, out, creation)
        os.remove(raw)
        return out

    def read(
        self,
        path: str,
        bands: Sequence[int],
        window: Optional[Tuple[int, int, int, int]] = None,
        out_shape: Optional[Tuple[int, int]] = None,
        masks: bool = False,
    ) -> np.ndarray:
        import numpy as np  # noqa: PLC0415 - only where pixels are read (uint8 conversions never import it)

        ds = self._open(path)
        xoff, yoff, w, h = window or (0, 0, ds.RasterXSize, ds.RasterYSize)
        bh, bw = out_shape or (h, w)
        arrays = []
        for b in bands:
            band = ds.GetRasterBand(b)
            if masks:
                band = band.GetMaskBand()
            arr, _ = self._call(lambda band=band: band.ReadAsArray(xoff, yoff, w, h, buf_xsize=bw, buf_ysize=bh))
            if arr is None:
                raise GdalFailure(f"cannot read band {b} of {path}")
            arrays.append(arr)
        return np.stack(arrays)

    def read_interleaved(self, path: str, bands: int) -> Tuple[int, int, bytes]:
        gdal = self.gdal
        ds = self._open(path)
        w, h = ds.RasterXSize, ds.RasterYSize
        data, _ = self._call(lambda: ds.ReadRaster(0, 0, w, h, buf_type=gdal.GDT_Byte, band_list=list(range(1, bands + 1)),
                                                   buf_pixel_space=bands, buf_line_space=w * bands, buf_band_space=1))
        if data is None:
            raise GdalFailure(f"cannot read {path}")
        return w, h, data

    def checksums(self, path: str) -> Tuple[List[int], List[int]]:
        ds = self._open(path)
        sums, msums = [], []
        for i in range(ds.RasterCount):
            band = ds.GetRasterBand(i + 1)
            sums.append(self._call(band.Checksum)[0])
            if band.GetMaskFlags() & GMF_PER_DATASET and not band.GetMaskFlags() & GMF_ALPHA:
                msums.append(self._call(band.GetMaskBand().Checksum)[0])
        return sums, msums

    def decode_check(self, path: str) -> List[str]:
        """Decode band 1 at its smallest overview (a JPEG's 1/8 scale still entropy-decodes every
        block), in C; GDAL's messages, where libjpeg's corrupt-data warnings appear (GdalFailure if it
        does not decode at all). No numpy needed."""
        ds = self._open(path)  # kept referenced: a band outliving its dataset crashes the bindings
        band = ds.GetRasterBand(1)
        n = band.GetOverviewCount()
        target = band.GetOverview(n - 1) if n else band
        messages = self._call(target.Checksum)[1]
        del target, band, ds
        return messages

    def set_config(self, key: str, value: Optional[str]) -> None:
        self.gdal.SetConfigOption(key, value)

    def get_config(self, key: str) -> Optional[str]:
        return self.gdal.GetConfigOption(key)

    def set_cachemax(self, nbytes: int) -> None:
        self.gdal.SetCacheMax(int(nbytes))

    def get_cachemax(self) -> int:
        return int(self.gdal.GetCacheMax())

    def quiet(self) -> None:
        """Send GDAL's messages nowhere (the CLI prints its own one-line reason)."""
        self.gdal.SetErrorHandler("CPLQuietErrorHandler")
