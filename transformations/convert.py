"""The conversion itself: input -> verified COG + JPEG, the one code path the CLI and
in-process callers (long-lived workers) share.
"""

from __future__ import annotations

import errno
import struct
import os
import threading
import time
from dataclasses import dataclass, field
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .backend import get_backend
from .budget import cache_cap_mb, memory_budget_mb
from .cog import cog_options, parallel_cog, cog_method
from .exit_codes import ConversionError, ExitCode, GdalFailure
from .rasterinfo import RasterInfo
from .failures import classify_write_failure, remove_outputs, temp_name
from .inputs import inspect_input
from .tiff import TiffTag, read_tiff_ifds
from .jpeg_pillow import (TRIM_AFTER_BYTES, StoredPixels, optimize_tables, stored_pixels, use_pillow,
                          whole_image_bytes, write_jpeg_pillow)
from .jpeg_strips import coefficient_buffer_bytes, write_streamed_jpeg
from .linux import start_writeback as _start_writeback, trim_heap as _trim_heap
from .provenance import embed_metadata
from .preview import PreviewPlan, plan_preview, preview_vrt
from .settings import CACHEMAX_ENV, COG_BLOCKSIZE, DEFAULT_CACHEMAX_MB, JPEG_CACHEMAX_MB, JPEG_QUALITY, OVERVIEW_THREADS_ENV, PARALLEL_CACHEMAX_MB, RESAMPLING_ENV, THREADS_ENV
from .validate import validate_cog, validate_jpeg

@dataclass
class ConversionResult:
    """Outcome of :func:`convert`: both outputs exist and were verified."""

    input: str
    cog: str
    jpeg: str
    width: int
    height: int
    bands: int
    manifest_bands: Optional[int]
    dtype: str
    jpeg_bands: int
    jpeg_size: Tuple[int, int]
    jpeg_downsample: int
    preview: str
    overview_sizes: List[Tuple[int, int]]
    validator: str
    backend: str
    gdal_version: str
    threads: int
    timings: Dict[str, float] = field(default_factory=dict)
    #: how the COG was built: "parallel" (overviews || full resolution, then assembled) or "driver"
    cog_method: str = "driver"
    #: how the JPEG was written: "driver" (GDAL's JPEG driver), "pillow" (libjpeg-turbo, jpeg_pillow.py)
    #: or "strips" (bounded memory, jpeg_strips.py)
    jpeg_method: str = "driver"
    warnings: List[str] = field(default_factory=list)
    #: the memory budget the conversion ran under and the GDAL block cache it chose (MB)
    memory_budget_mb: int = 0
    cachemax_mb: int = 0
    exit_code: ExitCode = ExitCode.OK
    reason: str = ""

    @property
    def band_mismatch(self) -> bool:
        return self.exit_code == ExitCode.BAND_MISMATCH



def _default_threads() -> int:
    """COG_PIPELINE_THREADS, OMP_NUM_THREADS (HTCondor sets it to the slot's CPUs), GDAL_NUM_THREADS, else the CPUs."""
    for var in (THREADS_ENV, "OMP_NUM_THREADS", "GDAL_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)



class _Config:
    """Set GDAL configuration options for the duration of a conversion, then restore them."""

    def __init__(self, values: Dict[str, Optional[str]]):
        self.values = values
        self.saved: Dict[str, Optional[str]] = {}

    def __enter__(self) -> "_Config":
        be = get_backend()
        for k, v in self.values.items():
            self.saved[k] = be.get_config(k)
            be.set_config(k, v)
        return self

    def __exit__(self, *exc: Any) -> None:
        be = get_backend()
        for k, v in self.saved.items():
            be.set_config(k, v)


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; every field's default is the executable's default (see docs/conversion.md)."""

    resampling: Optional[str] = None
    threads: Optional[int] = None
    cachemax_mb: Optional[int] = None
    verify_pixels: bool = False
    #: provenance written into the COG's GDAL metadata, domain ``COG_PIPELINE``
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: "auto", "rio-cogeo", "gdal" or "builtin" (see validate.validate_cog)
    validator: Optional[str] = None
    #: MB this conversion may use (default: the HTCondor slot's, else 1024; see budget.py)
    memory_budget_mb: Optional[int] = None


def check_metadata(items: Mapping[str, str]) -> Dict[str, str]:
    """The provenance pairs as a dict; ConversionError(USAGE) for a key GDAL could not keep."""
    out = {}
    for key, value in items.items():
        if not isinstance(key, str) or not key or "=" in key or any(c.isspace() for c in key):
            raise ConversionError(ExitCode.USAGE, f"metadata key {key!r}: must be non-empty, without '=' or spaces")
        if not isinstance(value, str) or "\x00" in value:
            raise ConversionError(ExitCode.USAGE, f"metadata value for {key!r} must be a string without NUL")
        out[key] = value
    return out


def _disk_code(exc: OSError) -> ExitCode:
    """OUT_OF_DISK for a full disk or quota (the caller may retry elsewhere), else INTERNAL."""
    return ExitCode.OUT_OF_DISK if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ExitCode.INTERNAL


@dataclass
class _Run:
    """What one conversion carries between its steps, so each step can be a small function."""

    info: RasterInfo
    plan: PreviewPlan
    token: str
    output_tif: str
    tmp_tif: str
    tmp_jpg: str
    tmp_vrt: str
    tmp_strips: str
    #: every temporary that may exist; all are removed if the conversion fails
    temps: List[str]
    timings: Dict[str, float]
    threads: int
    resampling: Optional[str]
    cachemax_mb: int
    #: True when neither the caller nor the environment chose the cache size, so it may be tuned
    cache_default: bool
    budget_mb: int
    method: str = "driver"
    jpeg_after: bool = False
    jpeg_streamed: bool = False
    #: the raster the COG and JPEG read (the input, or its decoded temporary); None until decided
    pixels: Optional[RasterInfo] = None
    #: GDAL's complaint when decompressing the input or writing the COG failed
    cog_failure: Optional[GdalFailure] = None
    #: the JPEG step's report: "method", "errors", "failure", "crash", "strips_problem", "seconds"
    jpeg_outcome: Dict[str, Any] = field(default_factory=dict)
    #: decode the JPEG back even when one encoder call wrote it whole (``--verify-pixels``)
    decode_jpeg: bool = False


def convert(
    input: Union[str, os.PathLike],
    output_tif: Union[str, os.PathLike],
    output_jpg: Union[str, os.PathLike],
    bands: Optional[int] = None,
    options: Optional[ConvertOptions] = None,
    **overrides: Any,
) -> ConversionResult:
    """Convert ``input`` into a COG at ``output_tif`` and a JPEG preview at ``output_jpg``.

    ``bands`` is what the manifest says; the file wins when they differ: both outputs
    are written per the file and the result has ``exit_code == ExitCode.BAND_MISMATCH``
    and a ``reason``. Any other problem raises :class:`ConversionError` and leaves no
    output behind. ``resampling`` overrides the overview resampling (default: the COG
    driver's own default, like the original tool); env ``COG_PIPELINE_RESAMPLING`` too.
    ``verify_pixels`` also compares full-resolution checksums of input and COG.

    This is the executable's code path itself (the CLI only parses arguments and prints), so a
    long-lived worker calling it in-process gets the same outputs, verification and exit codes.
    ``overrides`` are :class:`ConvertOptions` fields (``convert(..., threads=1)``).
    """
    opts = replace(options or ConvertOptions(), **overrides)
    metadata = check_metadata(opts.metadata)
    budget_mb = memory_budget_mb(opts.memory_budget_mb)
    started = time.perf_counter()
    input = os.fspath(input)
    output_tif, output_jpg = _output_paths(input, output_tif, output_jpg)
    threads = int(opts.threads or _default_threads())
    resampling = opts.resampling or os.environ.get(RESAMPLING_ENV) or None
    cachemax_mb, cache_default = _requested_cachemax(opts.cachemax_mb)
    info = inspect_input(input)
    run = _start_run(info, output_tif, output_jpg, threads, resampling, cachemax_mb, cache_default, budget_mb)
    run.decode_jpeg = opts.verify_pixels
    run.timings["inspect"] = time.perf_counter() - started
    mismatch = _band_mismatch(bands, info)
    out_dirs = _make_output_dirs(output_tif, output_jpg)
    try:
        _write_vrt(run.tmp_vrt, info, run.plan)
        _build_outputs(run, metadata)
        _raise_build_failures(run, out_dirs)
        t0 = time.perf_counter()
        verified = _verify_cog(run.tmp_tif, info, opts.validator, opts.verify_pixels)
        _check_jpeg(run)
        run.timings["verify"] = time.perf_counter() - t0
        _move_into_place(run, output_tif, output_jpg)
    except BaseException:
        remove_outputs(*run.temps)
        raise
    remove_outputs(run.tmp_vrt)
    run.timings["total"] = time.perf_counter() - started
    return _conversion_result(run, input, output_tif, output_jpg, bands, mismatch, verified)


def _output_paths(input: str, output_tif: Union[str, os.PathLike], output_jpg: Union[str, os.PathLike]
                  ) -> Tuple[str, str]:
    """The outputs as absolute paths; ConversionError(USAGE) if any two of the three paths coincide,
    because writing over the input (or one output over the other) would destroy data."""
    tif = os.path.abspath(os.fspath(output_tif))
    jpg = os.path.abspath(os.fspath(output_jpg))
    if os.path.abspath(input) in (tif, jpg) or tif == jpg:
        raise ConversionError(ExitCode.USAGE, "input and outputs must be three different paths")
    return tif, jpg


def _requested_cachemax(cachemax_mb: Optional[int]) -> Tuple[int, bool]:
    """(cache MB, whether it is the default): the caller's, else env COG_PIPELINE_CACHEMAX, else the default.

    Only a default cache is tuned later (parallel path, memory budget, JPEG step): a size someone
    chose is respected as given."""
    if cachemax_mb is not None:
        return cachemax_mb, False
    env_cache = os.environ.get(CACHEMAX_ENV, "").strip()
    cache_default = not env_cache.isdigit()
    return (DEFAULT_CACHEMAX_MB if cache_default else int(env_cache)), cache_default


def _start_run(info: RasterInfo, output_tif: str, output_jpg: str, threads: int, resampling: Optional[str],
               cachemax_mb: int, cache_default: bool, budget_mb: int) -> _Run:
    """Plan the conversion: the preview, the temporary names and how the COG and JPEG will be built."""
    plan = plan_preview(info)
    token = f"{os.getpid()}-{os.urandom(4).hex()}"  # not uuid: its import loads platform (~10 ms)
    tmp_tif = temp_name(output_tif, ".tif", token)
    tmp_jpg = temp_name(output_jpg, ".jpg", token)
    tmp_vrt = temp_name(output_jpg, ".vrt", token)
    tmp_strips = temp_name(output_jpg, ".strips.tif", token)
    return _Run(
        info=info, plan=plan, token=token, output_tif=output_tif, tmp_tif=tmp_tif, tmp_jpg=tmp_jpg, tmp_vrt=tmp_vrt,
        tmp_strips=tmp_strips, temps=[tmp_tif, tmp_jpg, tmp_vrt, tmp_strips], timings={},
        threads=threads, resampling=resampling, cachemax_mb=cachemax_mb, cache_default=cache_default, budget_mb=budget_mb,
    )


def _band_mismatch(bands: Optional[int], info: RasterInfo) -> str:
    """The reason to report when the manifest's band count is not the file's ("" when they agree)."""
    if bands is not None and int(bands) != info.count:
        return f"band mismatch: manifest says {int(bands)} bands, file has {info.count}; converted per file"
    return ""


def _make_output_dirs(output_tif: str, output_jpg: str) -> List[str]:
    """Create the output folders (the temporaries live beside the outputs) and return them."""
    out_dirs = sorted({os.path.dirname(output_tif), os.path.dirname(output_jpg)})
    for d in out_dirs:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise ConversionError(_disk_code(exc), f"cannot create output folder {d}: {exc.strerror}") from None
    return out_dirs


def _write_vrt(path: str, info: RasterInfo, plan: PreviewPlan) -> None:
    """Write the preview's VRT; the first write in the output folder, so it reports a full disk clearly."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(preview_vrt(info, plan))
    except OSError as exc:
        raise ConversionError(_disk_code(exc), f"cannot write in {os.path.dirname(path)}: {exc.strerror}") from None


def _plan_build(run: _Run) -> Dict[str, Optional[str]]:
    """Choose the COG method, whether the JPEG waits for the COG and the cache; return GDAL's config.

    Parallel path: the JPEG runs beside the COG threads, except for single-band inputs, where it runs
    after the COG (libjpeg's whole-image coefficient buffer on top of the COG threads' buffers would
    exceed the original tool's memory). With one thread (one CPU, as in a CHTC slot) running the JPEG
    beside the COG buys no time, only memory: it is written after the COG, so the two encoders' buffers
    never coexist. GDAL's JPEG driver holds the whole preview's DCT coefficients (optimised Huffman
    tables); above a third of the budget the preview is written strip by strip instead (jpeg_strips.py).
    """
    info, plan = run.info, run.plan
    run.method = cog_method(info, run.resampling)
    run.jpeg_after = (run.method == "parallel" and info.count == 1) or run.threads == 1
    if run.method == "parallel" and run.cache_default:
        run.cachemax_mb = PARALLEL_CACHEMAX_MB
    if run.cache_default:
        run.cachemax_mb = min(run.cachemax_mb, cache_cap_mb(run.budget_mb))
    run.jpeg_streamed = coefficient_buffer_bytes(plan.width, plan.height, plan.band_count) > (run.budget_mb << 20) // 3
    # Overviews are computed while the JPEG encoder (one thread) runs beside them.
    ovr_threads = os.environ.get(OVERVIEW_THREADS_ENV, "").strip()
    ovr_threads = ovr_threads if ovr_threads.isdigit() else str(max(1, run.threads - 1))
    return {
        "GDAL_NUM_THREADS": ovr_threads,
        # The COG driver's temporary overview file is read once and deleted: keeping
        # it uncompressed saves an LZW encode+decode of every overview pixel.
        "COG_TMP_COMPRESSION": "NONE",
    }


def _build_outputs(run: _Run, metadata: Dict[str, str]) -> None:
    """Write the COG and the JPEG into their temporaries under the chosen config and cache.

    Failures are recorded (``run.cog_failure``, ``run.jpeg_outcome``), not raised, so the JPEG
    thread is always joined and the caller's GDAL cache size is always restored."""
    be = get_backend()
    config = _plan_build(run)
    saved_cache = be.get_cachemax()
    be.set_cachemax(run.cachemax_mb << 20)
    try:
        with _Config(config):
            work, run.cog_failure = _decompressed_input(run)
            run.pixels = work
            jpeg_thread = threading.Thread(target=_make_jpeg, args=(run,), name="generate_cog-jpeg", daemon=True)
            if not run.jpeg_after and run.cog_failure is None:
                jpeg_thread.start()
            failure = _write_cog(run, work)
            if run.cog_failure is None:
                run.cog_failure = failure
            if metadata and run.cog_failure is None:
                _embed(run.tmp_tif, metadata, run.temps, run.token)
            if run.cog_failure is None:
                _start_writeback(run.tmp_tif)  # the disk writes the COG while the JPEG is encoded
            if run.jpeg_after and run.cog_failure is None:
                if run.cache_default:
                    be.set_cachemax(min(JPEG_CACHEMAX_MB, run.cachemax_mb) << 20)
                _trim_heap()  # hand the COG threads' freed buffers back before libjpeg's buffer
                _make_jpeg(run)
            elif not run.jpeg_after and jpeg_thread.is_alive():
                jpeg_thread.join()
            if work is not run.info:
                remove_outputs(work.path)
    finally:
        be.set_cachemax(saved_cache)  # a library caller keeps its own cache size, whatever happened
    run.timings["jpeg"] = run.jpeg_outcome.get("seconds", 0.0)


def _decompressed_input(run: _Run) -> Tuple[RasterInfo, Optional[GdalFailure]]:
    """The raster the COG and JPEG read: for the parallel path a compressed input is decoded once.

    The full resolution, the overview builder and the JPEG each read the input: decoding a
    compressed input once into an uncompressed temporary lets all three read that instead."""
    info = run.info
    if run.method != "parallel" or not _compressed(info.path):
        return info, None
    t0 = time.perf_counter()
    raw = temp_name(run.output_tif, ".raw.tif", run.token)
    run.temps.append(raw)
    work, failure = info, None
    try:
        get_backend().create_copy("GTiff", info.path, raw, {"COMPRESS": "NONE", "INTERLEAVE": "PIXEL",
                                                           "BIGTIFF": "IF_SAFER"})
        work = replace(info, path=raw)
        with open(run.tmp_vrt, "w", encoding="utf-8") as fh:
            fh.write(preview_vrt(work, run.plan))
    except GdalFailure as exc:
        failure = exc
    run.timings["decompress"] = time.perf_counter() - t0
    return work, failure


def _write_cog(run: _Run, work: RasterInfo) -> Optional[GdalFailure]:
    """Write the COG (parallel path, falling back to GDAL's COG driver); the GDAL failure, if any.

    Skips the parallel build when decompressing already failed (``run.cog_failure``)."""
    t0 = time.perf_counter()
    failure: Optional[GdalFailure] = None
    try:
        if run.method == "parallel" and run.cog_failure is None:
            try:
                parallel_cog(work, run.tmp_tif, run.threads, run.temps, run.token, run.timings,
                             beside_jpeg=not run.jpeg_after)
            except ValueError:  # a part GDAL wrote is not what the assembler expects
                run.method = "driver"
        if run.method == "driver":
            get_backend().create_copy("COG", run.info.path, run.tmp_tif,
                                      cog_options(run.info, run.threads, run.resampling))
    except GdalFailure as exc:
        failure = exc
    run.timings["cog"] = time.perf_counter() - t0
    return failure


def _make_jpeg(run: _Run) -> None:
    """Write and check the JPEG, recording the outcome instead of raising: it may run in a thread,
    and the main thread reports its failure only after the COG's."""
    plan, outcome = run.plan, run.jpeg_outcome
    t0 = time.perf_counter()
    try:
        stored = stored_pixels(run.pixels or run.info, plan)
        if not run.jpeg_streamed and use_pillow(plan.width, plan.height, plan.band_count, run.budget_mb, stored,
                                                alone=run.jpeg_after):
            _write_pillow_jpeg(run, outcome, stored)
        else:
            _write_jpeg(run.tmp_vrt, run.tmp_jpg, run.tmp_strips, plan.band_count, run.jpeg_streamed, outcome)
        _remove_sidecar(run.tmp_jpg)
        # The strips path assembles the entropy-coded segments itself, so its file is decoded back; a file one
        # encoder call wrote whole (Pillow's libjpeg-turbo, GDAL's driver) is not decoded again unless asked
        # (--verify-pixels): that decode cost ~30 ms per 2500² preview, 2.5 % of the conversion.
        decode = run.decode_jpeg or outcome.get("method") == "strips"
        outcome["errors"] = validate_jpeg(run.tmp_jpg, plan.width, plan.height, plan.band_count, decode=decode)
    except GdalFailure as exc:
        outcome["failure"] = exc
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        outcome["crash"] = exc
    outcome["seconds"] = time.perf_counter() - t0


def _raise_build_failures(run: _Run, out_dirs: List[str]) -> None:
    """Raise what went wrong writing the outputs, the COG's problem first (it is the product)."""
    if run.cog_failure is not None:
        raise classify_write_failure(run.cog_failure, run.info, out_dirs, "COG")
    if "crash" in run.jpeg_outcome:
        raise run.jpeg_outcome["crash"]
    if "failure" in run.jpeg_outcome:
        raise classify_write_failure(run.jpeg_outcome["failure"], run.info, out_dirs, "JPEG")


def _check_jpeg(run: _Run) -> None:
    """ConversionError(OUTPUT_INVALID) unless the JPEG was produced and passed validation."""
    jpeg_errors = run.jpeg_outcome.get("errors", ["JPEG was not produced"])
    if jpeg_errors:
        raise ConversionError(ExitCode.OUTPUT_INVALID, "; ".join(jpeg_errors))


def _move_into_place(run: _Run, output_tif: str, output_jpg: str) -> None:
    """Rename the verified temporaries onto the outputs; never leave a COG without its JPEG."""
    try:
        os.replace(run.tmp_tif, output_tif)
        os.replace(run.tmp_jpg, output_jpg)
    except OSError as exc:
        remove_outputs(output_tif)
        raise ConversionError(_disk_code(exc), f"cannot move outputs into place: {exc.strerror}") from None


def _conversion_result(run: _Run, input: str, output_tif: str, output_jpg: str, bands: Optional[int],
                       mismatch: str, verified: Tuple[str, List[str], Optional[RasterInfo]]) -> ConversionResult:
    """The :class:`ConversionResult` of a finished run (``verified`` is :func:`_verify_cog`'s answer)."""
    be, info, plan = get_backend(), run.info, run.plan
    validator, warns, out_info = verified
    strips_problem = run.jpeg_outcome.get("strips_problem")
    return ConversionResult(
        input=input,
        cog=output_tif,
        jpeg=output_jpg,
        width=info.width,
        height=info.height,
        bands=info.count,
        manifest_bands=None if bands is None else int(bands),
        dtype=info.dtypes[0],
        jpeg_bands=plan.band_count,
        jpeg_size=(plan.width, plan.height),
        jpeg_downsample=plan.downsample,
        preview=plan.description,
        overview_sizes=list(out_info.overview_sizes) if out_info else [],
        validator=validator,
        backend=be.name,
        gdal_version=str(be.version),
        threads=run.threads,
        cog_method=run.method,
        jpeg_method=run.jpeg_outcome.get("method", "driver"),
        timings=run.timings,
        warnings=list(warns) + ([f"JPEG strips not joinable ({strips_problem}): GDAL's JPEG driver used"]
                                if "strips_problem" in run.jpeg_outcome else []),
        memory_budget_mb=run.budget_mb,
        cachemax_mb=run.cachemax_mb,
        exit_code=ExitCode.BAND_MISMATCH if mismatch else ExitCode.OK,
        reason=mismatch,
    )


def _compressed(path: str) -> bool:
    """True when the TIFF's first image is compressed (its pixels cost a decode on every read)."""
    try:
        ifds, _ = read_tiff_ifds(path)
    except (OSError, ValueError):
        return False
    return bool(ifds) and ifds[0].tags.get(TiffTag.COMPRESSION, [1])[0] != 1


def _write_pillow_jpeg(run: _Run, outcome: Dict[str, Any], stored: Optional[StoredPixels]) -> None:
    """The preview through Pillow (jpeg_pillow.py), from the ``stored`` pixels of the file the COG reads
    when they are exactly the preview's (jpeg_pillow.stored_pixels), else from the VRT."""
    plan = run.plan
    optimize = optimize_tables(plan.width, plan.height, plan.band_count)
    write_jpeg_pillow(run.tmp_vrt, run.tmp_jpg, plan.band_count, JPEG_QUALITY, stored, optimize)
    if whole_image_bytes(plan.width, plan.height, plan.band_count, stored, optimize) >= TRIM_AFTER_BYTES:
        _trim_heap()  # freed by now; see TRIM_AFTER_BYTES
    outcome["method"] = ("pillow-stored" if stored is not None else "pillow") + ("" if optimize else "+std-tables")


def _write_jpeg(vrt: str, jpg: str, strips: str, bands: int, streamed: bool, outcome: Dict[str, Any]) -> None:
    """The preview: GDAL's JPEG driver, or (``streamed``) baseline strips joined in bounded memory."""
    be = get_backend()
    if streamed:
        try:
            write_streamed_jpeg(vrt, strips, jpg, bands, JPEG_QUALITY)
            outcome["method"] = "strips"
            return
        except ValueError as exc:  # strips not as expected (another libtiff/libjpeg): the driver, unbounded
            outcome["strips_problem"] = str(exc)
        finally:
            remove_outputs(strips)
    be.create_copy("JPEG", vrt, jpg, {"QUALITY": str(JPEG_QUALITY)})
    outcome["method"] = "driver"


def _remove_sidecar(path: str) -> None:
    try:
        os.remove(path + ".aux.xml")
    except OSError:
        pass



def _embed(cog: str, metadata: Dict[str, str], temps: List[str], token: str) -> None:
    """Add the provenance pairs to the finished COG (see provenance.py), in place."""
    with_md = temp_name(cog, ".md.tif", token)
    temps.append(with_md)
    try:
        embed_metadata(cog, with_md, metadata)
        os.replace(with_md, cog)
    except OSError as exc:
        raise ConversionError(_disk_code(exc), f"cannot write the COG's metadata: {exc.strerror}") from None
    except (ValueError, struct.error) as exc:
        raise ConversionError(ExitCode.INTERNAL, f"cannot embed metadata: {exc}") from None


def _verify_cog(tmp_tif: str, info: RasterInfo, validator: Optional[str], verify_pixels: bool
                ) -> Tuple[str, List[str], Optional[RasterInfo]]:
    """Validate the written COG and compare it with the input; ConversionError(OUTPUT_INVALID) if it fails.

    Returns (validator name, its warnings, the COG as GDAL reopens it)."""
    be = get_backend()
    validator, errors, warns = validate_cog(tmp_tif, validator)
    try:
        out_info = be.info(tmp_tif)
    except GdalFailure as exc:
        errors.append(f"GDAL cannot reopen it: {exc.text}")
        out_info = None
    if out_info is not None:
        got = (out_info.width, out_info.height, out_info.count, out_info.dtypes)
        want = (info.width, info.height, info.count, info.dtypes)
        if got != want:
            errors.append(f"COG is {got}, input is {want}")
        if out_info.block_size != (COG_BLOCKSIZE, COG_BLOCKSIZE):
            errors.append(f"COG blocks are {out_info.block_size}")
        smallest = out_info.overview_sizes[-1] if out_info.overview_sizes else (info.width, info.height)
        if max(smallest) > COG_BLOCKSIZE:
            errors.append(f"COG overviews stop at {smallest[0]}x{smallest[1]}, larger than one tile")
    if errors:
        raise ConversionError(ExitCode.OUTPUT_INVALID, f"COG failed validation ({validator}): {'; '.join(errors)}")
    if verify_pixels:
        try:
            if be.checksums(info.path) != be.checksums(tmp_tif):
                raise ConversionError(ExitCode.OUTPUT_INVALID, "COG pixels differ from the input's")
        except GdalFailure as exc:
            raise ConversionError(ExitCode.OUTPUT_INVALID, f"cannot compare pixels: {exc.text}") from None
    return validator, warns, out_info
