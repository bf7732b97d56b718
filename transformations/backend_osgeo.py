"""GDAL's own Python bindings (``osgeo.gdal``), as in the stock GDAL containers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

from .backend import GMF_ALPHA, GMF_PER_DATASET, RasterInfo, numpy_dtype_name
from .exit_codes import GdalFailure


class OsgeoBackend:
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
        kw = {"allowed_drivers": drivers} if drivers else {}
        ds, messages = self._call(lambda: gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY, **kw))
        if ds is None:
            raise GdalFailure(messages[-1] if messages else f"GDAL cannot open {path}", messages)
        return ds

    def info(self, path: str, drivers: Optional[List[str]] = None, overviews: bool = True) -> RasterInfo:
        gdal = self.gdal
        ds = self._open(path, drivers)
        bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
        b1 = bands[0] if bands else None
        levels = range(b1.GetOverviewCount()) if b1 is not None and overviews else []
        return RasterInfo(
            path=path, driver=ds.GetDriver().ShortName, width=ds.RasterXSize, height=ds.RasterYSize,
            count=ds.RasterCount, dtypes=[numpy_dtype_name(gdal.GetDataTypeName(b.DataType)) for b in bands],
            nodata=[b.GetNoDataValue() for b in bands],
            colorinterp=[gdal.GetColorInterpretationName(b.GetColorInterpretation()).lower() for b in bands],
            mask_flags=[b.GetMaskFlags() for b in bands],
            block_size=tuple(b1.GetBlockSize()) if b1 is not None else (0, 0),
            overview_sizes=[(o.XSize, o.YSize) for o in (b1.GetOverview(i) for i in levels)],
            has_palette=bool(b1 is not None and b1.GetColorTable() is not None))

    def create_copy(self, driver: str, src: str, dst: str, options: Dict[str, str]) -> List[str]:
        gdal = self.gdal
        src_ds = self._open(src)
        drv = gdal.GetDriverByName(driver)
        if drv is None:
            raise GdalFailure(f"GDAL has no {driver} driver")

        def do() -> Any:
            out = drv.CreateCopy(dst, src_ds, 0, options=[f"{k}={v}" for k, v in options.items()])
            if out is None:
                return None
            out.FlushCache()
            out = None  # noqa: F841  (closes and flushes the file)
            return True

        ok, messages = self._call(do)
        if not ok:
            raise GdalFailure(messages[-1] if messages else f"{driver} CreateCopy failed", messages)
        return messages

    def read(self, path: str, bands: Sequence[int], window: Optional[Tuple[int, int, int, int]] = None,
             out_shape: Optional[Tuple[int, int]] = None, masks: bool = False) -> np.ndarray:
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

    def checksums(self, path: str) -> Tuple[List[int], List[int]]:
        ds = self._open(path)
        sums, msums = [], []
        for i in range(ds.RasterCount):
            band = ds.GetRasterBand(i + 1)
            sums.append(self._call(band.Checksum)[0])
            if band.GetMaskFlags() & GMF_PER_DATASET and not band.GetMaskFlags() & GMF_ALPHA:
                msums.append(self._call(band.GetMaskBand().Checksum)[0])
        return sums, msums

    def decode_check(self, path: str) -> Tuple[List[str], Tuple[float, float]]:
        """Decode every band at its smallest overview (a JPEG's 1/8 scale still entropy-decodes every block), in
        C without numpy: (GDAL's messages, where libjpeg's corrupt-data warnings appear; (min, max))."""
        ds = self._open(path)  # kept referenced: a band outliving its dataset crashes the bindings
        lo, hi, messages = 255.0, 0.0, []
        for b in range(1, ds.RasterCount + 1):
            band = ds.GetRasterBand(b)
            n = band.GetOverviewCount()
            target = band.GetOverview(n - 1) if n else band
            value_range, msgs = self._call(lambda target=target: target.ComputeRasterMinMax(False))
            if value_range is None:
                raise GdalFailure(msgs[-1] if msgs else f"cannot decode {path}", msgs)
            messages += msgs
            lo, hi = min(lo, value_range[0]), max(hi, value_range[1])
            del target, band
        return messages, (lo, hi)

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
