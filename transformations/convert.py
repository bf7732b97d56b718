"""The conversion itself: input -> verified COG + JPEG, the one code path the CLI and in-process callers
(long-lived workers) share.

One flow: inspect the input once, write a VRT of it carrying the provenance, let GDAL's COG
driver copy that VRT, write the preview (jpeg.py), validate both outputs, fill in the provenance, and only
then move them into place. Until verified, every output is written under a hidden temporary name beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import astuple, dataclass, field, replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .backend import RasterInfo, get_backend
from .budget import cache_cap_mb, memory_budget_mb
from .exit_codes import ConversionError, ExitCode, GdalFailure
from .jpeg import choose_writer, write_preview
from .preview import PreviewPlan, composites_in_numpy, plan_preview, preview_vrt
from .profile import DEFAULT, Profile, with_overrides
from .provenance import PROVENANCE_DOMAIN, fill_slot, slot_vrt_metadata
from .settings import TIFF_MAGICS, env
from .tiff import read_tiff_ifds
from .validate import builtin_check, validate_jpeg


@dataclass
class ConversionResult:
    """Outcome of :func:`convert`: both outputs exist and were verified."""

    input: str
    cog: str
    jpeg: str
    width: int
    height: int
    bands: int
    dtype: str
    jpeg_bands: int
    jpeg_size: Tuple[int, int]
    jpeg_downsample: int
    preview: str
    overview_sizes: List[Tuple[int, int]]
    backend: str
    gdal_version: str
    threads: int
    profile: Profile = DEFAULT
    timings: Dict[str, float] = field(default_factory=dict)
    #: how the JPEG was written: "driver" (GDAL's JPEG driver), "pillow" or "strips" (jpeg.py)
    jpeg_method: str = "driver"
    #: the one value every preview sample has, when the preview is uniform (a blank-looking JPEG); else None
    preview_uniform: Optional[int] = None
    warnings: List[str] = field(default_factory=list)
    memory_budget_mb: int = 0
    #: GDAL's block cache during the conversion (MB): GDAL_CACHEMAX if set, else 1/8 of the budget
    cachemax_mb: int = 0
    exit_code: ExitCode = ExitCode.OK
    reason: str = ""


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; every field's default is the executable's default (see docs/conversion.md)."""

    #: the profile (default: profile.DEFAULT with env COG_PIPELINE_PROFILE's overrides)
    profile: Optional[Profile] = None
    threads: Optional[int] = None
    verify_pixels: bool = False
    #: provenance written into the COG's GDAL metadata, domain ``COG_PIPELINE``
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: MB this conversion may use (default: the HTCondor slot's, else 1024; see budget.py)
    memory_budget_mb: Optional[int] = None


def default_profile() -> Profile:
    """profile.DEFAULT with the overrides of env COG_PIPELINE_PROFILE (``NAME=VALUE[,NAME=VALUE]``);
    ConversionError(USAGE) if they are bad."""
    try:
        return with_overrides(p.strip() for p in env("COG_PIPELINE_PROFILE").split(",") if p.strip())
    except ValueError as exc:
        raise ConversionError(ExitCode.USAGE, f"COG_PIPELINE_PROFILE: {exc}") from None


def default_threads() -> int:
    """COG_PIPELINE_THREADS, OMP_NUM_THREADS (HTCondor sets it to the slot's CPUs), else the CPUs."""
    for value in (env("COG_PIPELINE_THREADS"), os.environ.get("OMP_NUM_THREADS", "").strip()):
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_metadata(items: Mapping[str, str]) -> Dict[str, str]:
    """The provenance pairs as a dict; ConversionError(USAGE) for a key GDAL could not keep."""
    for key, value in items.items():
        if not isinstance(key, str) or not key or "=" in key or any(c.isspace() for c in key):
            raise ConversionError(ExitCode.USAGE, f"metadata key {key!r}: must be non-empty, without '=' or spaces")
        if not isinstance(value, str) or "\x00" in value:
            raise ConversionError(ExitCode.USAGE, f"metadata value for {key!r} must be a string without NUL")
    return dict(items)


def _disk_code(exc: OSError) -> ExitCode:
    """OUT_OF_DISK for a full disk or quota (the caller may retry elsewhere), else INTERNAL."""
    return ExitCode.OUT_OF_DISK if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ExitCode.INTERNAL


@dataclass
class _Paths:
    """The temporaries of one conversion, beside the outputs; all are removed if it fails."""

    tif: str
    jpg: str
    source_vrt: str
    preview_vrt: str
    strips: str

    @classmethod
    def beside(cls, output_tif: str, output_jpg: str) -> "_Paths":
        """Hidden names beside the (absolute) outputs: ``.x.tif.<pid>-<random>.tmp.tif``."""
        token = f"{os.getpid()}-{os.urandom(4).hex()}"

        def temp(final: str, suffix: str) -> str:
            return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{token}.tmp{suffix}")

        return cls(temp(output_tif, ".tif"), temp(output_jpg, ".jpg"), temp(output_tif, ".vrt"),
                   temp(output_jpg, ".vrt"), temp(output_jpg, ".strips.tif"))


def _input_problem(path: str) -> Optional[str]:
    """Why the input is not a complete TIFF: missing, empty, not a TIFF, a broken IFD chain, data past the end."""
    if not os.path.exists(path):
        return f"input does not exist: {path}"
    if os.path.isdir(path):
        return f"input is a directory: {path}"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return f"cannot read input: {exc.strerror}"
    if not head:
        return f"input is empty (0 bytes): {path}"
    if head[:4] not in TIFF_MAGICS:
        return f"not a TIFF file (starts with {head[:4]!r}): {path}"
    try:
        ifds, size = read_tiff_ifds(path)
    except ValueError as exc:
        return f"damaged TIFF structure: {exc}"
    except OSError as exc:
        return f"cannot read input: {exc}"
    if not ifds:
        return "TIFF has no image directory"
    end = max((off + cnt for d in ifds for off, cnt in zip(d.data_offsets, d.data_counts) if off and cnt), default=0)
    return f"truncated: the file has {size} bytes but its image data extends to byte {end}" if end > size else None


def inspect_input(path: str) -> RasterInfo:
    """Open the input as a GeoTIFF before anything is written, so a bad input is INPUT_UNREADABLE, not INTERNAL."""
    problem = _input_problem(path)
    if problem:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, problem)
    try:
        info = get_backend().info(path, drivers=["GTiff"])
    except GdalFailure as exc:
        raise ConversionError(ExitCode.INPUT_UNREADABLE, f"GDAL cannot open it: {exc.text}") from None
    if info.count < 1:
        raise ConversionError(ExitCode.UNSUPPORTED_INPUT, "the TIFF has no raster bands")
    return info


def remove_outputs(*paths: str) -> None:
    for p in paths:
        for q in (p, p + ".aux.xml", p + ".ovr.tmp", p + ".msk.ovr.tmp"):
            with contextlib.suppress(OSError):
                os.remove(q)


def convert(input: Union[str, os.PathLike], output_tif: Union[str, os.PathLike], output_jpg: Union[str, os.PathLike],
            bands: Optional[int] = None, options: Optional[ConvertOptions] = None,
            **overrides: Any) -> ConversionResult:
    """Convert ``input`` into a COG at ``output_tif`` and a JPEG preview at ``output_jpg``.

    ``bands`` is what the manifest says; the file wins when they differ: both outputs are written per the
    file and the result has ``exit_code == ExitCode.BAND_MISMATCH`` and a ``reason``. Any other problem
    raises :class:`ConversionError` and leaves no output behind. ``overrides`` are :class:`ConvertOptions`
    fields (``convert(..., threads=1)``).
    """
    opts = replace(options or ConvertOptions(), **overrides)
    profile = opts.profile or default_profile()
    metadata = check_metadata(opts.metadata)
    budget_mb = memory_budget_mb(opts.memory_budget_mb)
    threads = int(opts.threads or default_threads())
    started = time.perf_counter()
    input = os.fspath(input)
    output_tif, output_jpg = _output_paths(input, output_tif, output_jpg)
    info = inspect_input(input)
    plan = plan_preview(info, profile.preview_bands)
    timings = {"inspect": time.perf_counter() - started}
    mismatch = ""
    if bands is not None and int(bands) != info.count:
        mismatch = f"band mismatch: manifest says {int(bands)} bands, file has {info.count}; converted per file"
    out_dirs = _make_output_dirs(output_tif, output_jpg)
    paths = _Paths.beside(output_tif, output_jpg)
    provenance = {**metadata, **profile.as_metadata()}
    be = get_backend()
    saved_cache = be.get_cachemax()
    if not os.environ.get("GDAL_CACHEMAX"):  # GDAL's own option wins; else the budget sizes the cache
        be.set_cachemax(cache_cap_mb(budget_mb) << 20)
    cachemax_mb = be.get_cachemax() >> 20
    writer = choose_writer(plan.width, plan.height, plan.band_count, budget_mb)
    composite = (info.path, plan.bands) if writer == "pillow" and composites_in_numpy(plan) else None
    try:
        _write_text(paths.preview_vrt, preview_vrt(info, plan))
        t0 = time.perf_counter()
        _write_cog(info, paths, profile, threads, provenance, out_dirs)
        timings["cog"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _write_jpeg(info, plan, paths, profile, writer, composite, out_dirs)
        timings["jpeg"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _fill_provenance(paths.tif, provenance)
        warns, out_info = verify_cog(paths.tif, info, profile, opts.verify_pixels)
        errors, (lo, hi) = validate_jpeg(paths.jpg, plan.width, plan.height, plan.band_count)
        if errors:
            raise ConversionError(ExitCode.OUTPUT_INVALID, "; ".join(errors))
        timings["verify"] = time.perf_counter() - t0
        _move_into_place(paths, output_tif, output_jpg)
    except BaseException:
        remove_outputs(*astuple(paths))
        raise
    finally:
        be.set_cachemax(saved_cache)  # a library caller keeps its own cache size, whatever happened
    remove_outputs(paths.source_vrt, paths.preview_vrt, paths.strips)
    timings["total"] = time.perf_counter() - started
    return ConversionResult(
        input=input, cog=output_tif, jpeg=output_jpg, width=info.width, height=info.height, bands=info.count,
        dtype=info.dtypes[0], jpeg_bands=plan.band_count, jpeg_size=(plan.width, plan.height),
        jpeg_downsample=plan.downsample, preview=plan.description, overview_sizes=list(out_info.overview_sizes),
        backend=be.name, gdal_version=str(be.version), threads=threads, profile=profile, timings=timings,
        jpeg_method=writer, preview_uniform=int(lo) if lo == hi else None, warnings=list(warns),
        memory_budget_mb=budget_mb, cachemax_mb=cachemax_mb,
        exit_code=ExitCode.BAND_MISMATCH if mismatch else ExitCode.OK, reason=mismatch,
    )


def _output_paths(input: str, output_tif: Union[str, os.PathLike],
                  output_jpg: Union[str, os.PathLike]) -> Tuple[str, str]:
    """The outputs as absolute paths; ConversionError(USAGE) if any two of the three paths coincide,
    because writing over the input (or one output over the other) would destroy data."""
    tif = os.path.abspath(os.fspath(output_tif))
    jpg = os.path.abspath(os.fspath(output_jpg))
    if os.path.abspath(input) in (tif, jpg) or tif == jpg:
        raise ConversionError(ExitCode.USAGE, "input and outputs must be three different paths")
    return tif, jpg


def _make_output_dirs(output_tif: str, output_jpg: str) -> List[str]:
    """Create the output folders (the temporaries live beside the outputs) and return them."""
    out_dirs = sorted({os.path.dirname(output_tif), os.path.dirname(output_jpg)})
    for d in out_dirs:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise ConversionError(_disk_code(exc), f"cannot create output folder {d}: {exc.strerror}") from None
    return out_dirs


def _write_text(path: str, text: str) -> None:
    """Write a small file beside the outputs; the first write there, so it reports a full disk clearly."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ConversionError(_disk_code(exc), f"cannot write in {os.path.dirname(path)}: {exc.strerror}") from None


def _write_cog(info: RasterInfo, paths: _Paths, profile: Profile, threads: int, provenance: Dict[str, str],
               out_dirs: List[str]) -> None:
    """GDAL's COG driver copies a VRT of the input that holds the provenance slot (provenance.py)."""
    be = get_backend()
    try:
        be.create_copy("VRT", info.path, paths.source_vrt, {})
        with open(paths.source_vrt, encoding="utf-8") as fh:
            text = fh.read()
        head = text.index(">", text.index("<VRTDataset")) + 1
        _write_text(paths.source_vrt, text[:head] + slot_vrt_metadata(provenance) + text[head:])
        # The COG driver's temporary overview file is read once and deleted: uncompressed, it saves an LZW
        # encode and decode of every overview pixel (0.39 -> 0.30 CPU-s at 2000² 3-band, one thread). The
        # overviews in one thread, the compression on all (NUM_THREADS): at 5000² 4-band on 2 cores 2.8 instead
        # of 3.8 CPU-s for the same wall time. Both only where the environment does not set them.
        with _gdal_config({"GDAL_NUM_THREADS": "1", "COG_TMP_COMPRESSION": "NONE"}):
            be.create_copy("COG", paths.source_vrt, paths.tif, profile.creation_options(threads))
    except GdalFailure as exc:
        raise classify_write_failure(exc, info, out_dirs, "COG") from None


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _probe_input(info: RasterInfo) -> Optional[str]:
    """Read the whole input, block row by block row; the GDAL error text if a read fails."""
    be = get_backend()
    rows = max(1, min(info.height, max(info.block_size[1], 1) * max(1, (8 << 20) // max(1, info.width * info.count))))
    try:
        for y in range(0, info.height, rows):
            be.read(info.path, list(range(1, info.count + 1)), window=(0, y, info.width, min(rows, info.height - y)))
    except GdalFailure as exc:
        return exc.text
    return None


def classify_write_failure(exc: GdalFailure, info: RasterInfo, out_dirs: Sequence[str], what: str) -> ConversionError:
    """OUT_OF_DISK when GDAL says the disk is full; else INPUT_UNREADABLE when the input does not read back;
    else OUT_OF_DISK when the output file system has less room left than the image needs (libtiff's messages
    on a full disk do not always say so); else INTERNAL with GDAL's message."""
    text = exc.text
    free = min((_free_bytes(d) for d in out_dirs), default=-1)
    said_full = any(word in text.lower() for word in ("no space", "enospc", "disk full", "quota"))
    problem = None if said_full else _probe_input(info)
    if problem:
        return ConversionError(ExitCode.INPUT_UNREADABLE, f"corrupt pixel data: {problem}")
    if said_full or 0 <= free < info.width * info.height * info.count * 2:  # full resolution + temporary overviews
        return ConversionError(ExitCode.OUT_OF_DISK, f"no space left while writing the {what} ({free} bytes free): {text}")
    return ConversionError(ExitCode.INTERNAL, f"writing the {what} failed: {text}")


@contextlib.contextmanager
def _gdal_config(values: Dict[str, str]) -> Iterator[None]:
    """Set GDAL configuration options the environment does not set, for one step; then restore them."""
    be = get_backend()
    values = {k: v for k, v in values.items() if not os.environ.get(k)}
    saved = {k: be.get_config(k) for k in values}
    for k, v in values.items():
        be.set_config(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            be.set_config(k, v)


def _write_jpeg(info: RasterInfo, plan: PreviewPlan, paths: _Paths, profile: Profile, writer: str,
                composite: Optional[Tuple[str, List[int]]], out_dirs: List[str]) -> None:
    try:
        write_preview(paths.preview_vrt, paths.jpg, paths.strips, plan.band_count, profile.jpeg_quality, writer,
                      composite)
    except GdalFailure as exc:
        raise classify_write_failure(exc, info, out_dirs, "JPEG") from None
    except ValueError as exc:  # strips this libtiff did not lay out as jpeg_strips.py expects
        raise ConversionError(ExitCode.INTERNAL, f"cannot join the JPEG strips: {exc}") from None
    finally:
        remove_outputs(paths.strips)
    with contextlib.suppress(OSError):
        os.remove(paths.jpg + ".aux.xml")


def verify_cog(path: str, info: RasterInfo, profile: Profile,
               verify_pixels: bool = False) -> Tuple[List[str], RasterInfo]:
    """Validate the written COG and compare it with the input; ConversionError(OUTPUT_INVALID) if it fails.

    Returns (the validator's warnings, the COG as GDAL reopens it)."""
    be = get_backend()
    errors, warns = builtin_check(path)
    out_info = None
    try:
        out_info = be.info(path)
    except GdalFailure as exc:
        errors.append(f"GDAL cannot reopen it: {exc.text}")
    if out_info is not None:
        got = (out_info.width, out_info.height, out_info.count, out_info.dtypes)
        want = (info.width, info.height, info.count, info.dtypes)
        if got != want:
            errors.append(f"COG is {got}, input is {want}")
        if out_info.block_size != (profile.blocksize, profile.blocksize):
            errors.append(f"COG blocks are {out_info.block_size}, the profile says {profile.blocksize}")
        smallest = out_info.overview_sizes[-1] if out_info.overview_sizes else (info.width, info.height)
        if max(smallest) > profile.blocksize:
            errors.append(f"COG overviews stop at {smallest[0]}x{smallest[1]}, larger than one tile")
    if errors or out_info is None:
        raise ConversionError(ExitCode.OUTPUT_INVALID, f"COG failed validation: {'; '.join(errors)}")
    if verify_pixels:
        try:
            same = be.checksums(info.path) == be.checksums(path)
        except GdalFailure as exc:
            raise ConversionError(ExitCode.OUTPUT_INVALID, f"cannot compare pixels: {exc.text}") from None
        if not same:
            raise ConversionError(ExitCode.OUTPUT_INVALID, "COG pixels differ from the input's")
    return warns, out_info


def _fill_provenance(path: str, provenance: Dict[str, str]) -> None:
    """Write the provenance into the slot the COG driver copied (provenance.py)."""
    try:
        fill_slot(path, provenance)
    except OSError as exc:
        raise ConversionError(_disk_code(exc), f"cannot write the COG's metadata: {exc.strerror}") from None
    except ValueError as exc:
        raise ConversionError(ExitCode.INTERNAL, f"cannot record provenance in {PROVENANCE_DOMAIN}: {exc}") from None


def _move_into_place(paths: _Paths, output_tif: str, output_jpg: str) -> None:
    """Rename the verified temporaries onto the outputs; never leave a COG without its JPEG."""
    try:
        os.replace(paths.tif, output_tif)
        os.replace(paths.jpg, output_jpg)
    except OSError as exc:
        remove_outputs(output_tif)
        raise ConversionError(_disk_code(exc), f"cannot move outputs into place: {exc.strerror}") from None
