"""The ``generate_cog`` command line: arguments in, exit code and at most one stderr line out."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Dict, Iterator, Optional, Sequence, Tuple

from .backend import loaded_backend
from .convert import ConversionResult, convert, default_profile
from .exit_codes import ConversionError, ExitCode, one_line
from .profile import FIELDS, with_overrides
from .settings import CACHE_SHARE, DEFAULT_MEMORY_BUDGET_MB, ENV, env


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(ExitCode.USAGE, f"USAGE: {one_line(message)} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="generate_cog", description="Convert one GeoTIFF into a verified Cloud Optimized GeoTIFF "
                        "(LZW, 512 tiles, internal overviews) and a quality-80 JPEG preview.",
                        epilog="Exit codes: " + ", ".join(f"{c.value} {c.name}" for c in ExitCode))
    p.add_argument("input", help="input GeoTIFF")
    p.add_argument("output_tif", help="COG to write (parent folders are created)")
    p.add_argument("output_jpg", help="JPEG preview to write (parent folders are created)")
    p.add_argument("--bands", type=int, default=None, help="band count the manifest gives; the file wins (exit 5 on mismatch)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME=VALUE",
                   help=f"override a profile setting ({', '.join(FIELDS)}; repeatable; on top of env "
                   "COG_PIPELINE_PROFILE), e.g. compress=DEFLATE")
    p.add_argument("--threads", type=int, default=None, help="threads for compression and overviews "
                   "(default: env COG_PIPELINE_THREADS, OMP_NUM_THREADS, or the CPUs available)")
    p.add_argument("--memory-budget", type=int, default=None, metavar="MB",
                   help=f"memory this conversion may use (default: env COG_PIPELINE_MEMORY_BUDGET, the HTCondor slot's "
                   f"RequestMemory, else {DEFAULT_MEMORY_BUDGET_MB}); caps GDAL's block cache at 1/{CACHE_SHARE}")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="provenance to embed in the COG's GDAL metadata, domain COG_PIPELINE (repeatable)")
    p.add_argument("--metadata-b64", default=None, metavar="B64",
                   help="provenance as one base64url JSON object (safe through any argument quoting); adds GDAL_VERSION and CREATED_UTC")
    p.add_argument("--verify-pixels", action="store_true", help="also compare full-resolution checksums of input and COG, and decode the JPEG back")
    p.add_argument("--empty-outputs-on-failure", action="store_true",
                   help="after a failure, leave empty output files (inside a Pegasus job, whose wrapper stages every "
                   "declared output, the job then ends at once with this exit code; a failed job's outputs never "
                   "leave its scratch area)")
    p.add_argument("--verbose", "-v", action="store_true", help="print a summary and GDAL's own messages")
    p.epilog += ". Environment: " + "; ".join(f"{k}: {v.doc}" for k, v in ENV.items())
    return p


class _UsageError(Exception):
    """A bad argument argparse cannot see; main() prints it as one USAGE line and exits 2."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the executable: exit code, at most one line on stderr (a summary on stdout with --verbose)."""
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        metadata = _metadata_from_args(args)
    except _UsageError as exc:
        print(f"USAGE: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    # GDAL, libtiff and Python warnings may write to the process's stderr from any thread;
    # the contract is ONE line there, so they go to a temporary file (shown with --verbose).
    with tempfile.TemporaryFile(mode="w+b") as captured:
        with _stderr_to(captured.fileno()):
            code, line, summary = _run_conversion(args, metadata)
        if code and args.empty_outputs_on_failure:  # empty files where the failed conversion wrote none
            for path in (args.output_tif, args.output_jpg):
                with contextlib.suppress(OSError), open(path, "xb"):
                    pass
        if args.verbose:  # GDAL's captured messages on stderr, then the summary on stdout
            captured.seek(0)
            noise = captured.read().decode("utf-8", "replace").strip()
            if noise:
                print(noise, file=sys.stderr)
            if summary:
                print(summary)
    if line:
        print(one_line(line), file=sys.stderr)
    return int(code)


def _check_args(args: argparse.Namespace) -> None:
    """_UsageError for a number argparse accepts but the conversion cannot honour."""
    if args.memory_budget is not None and args.memory_budget < 64:
        raise _UsageError("--memory-budget must be at least 64 (MB)")
    if args.bands is not None and args.bands < 1:
        raise _UsageError("--bands must be at least 1")
    try:
        args.profile = with_overrides(args.profile, default_profile())
    except (ValueError, ConversionError) as exc:
        raise _UsageError(f"--profile: {exc}") from None


def _metadata_from_args(args: argparse.Namespace) -> Dict[str, str]:
    """The provenance pairs of --metadata KEY=VALUE, then --metadata-b64's JSON object on top."""
    metadata = {}
    for pair in args.metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _UsageError(f"--metadata {one_line(pair)!r}: expected KEY=VALUE")
        metadata[key] = value
    if args.metadata_b64 is not None:
        try:
            items = json.loads(base64.urlsafe_b64decode(args.metadata_b64 + "=" * (-len(args.metadata_b64) % 4)))
            metadata.update({str(k): str(v) for k, v in items.items()})
        except (ValueError, AttributeError, binascii.Error):
            raise _UsageError("--metadata-b64: expected base64url of a JSON object") from None
    return metadata


@contextlib.contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """Point file descriptor 2 at ``fd`` (unless it cannot be redirected), then back, so our one line reaches
    the real stderr."""
    try:
        sys.stderr.flush()
        saved_fd: Optional[int] = os.dup(2)
        os.dup2(fd, 2)
    except OSError:
        saved_fd = None
    try:
        yield
    finally:
        if saved_fd is not None:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def check_source(path: str, metadata: Dict[str, str]) -> None:
    """SOURCE_CHANGED unless the file is the version the workflow listed: its size, and its MD5 when the listed
    ETag is a plain MD5 (a single-part upload; a multipart ETag is not the file's MD5, so only the size counts)."""
    size, etag = metadata.get("SOURCE_SIZE", ""), metadata.get("SOURCE_ETAG", "").strip('"').lower()
    if not size.isdigit():
        return
    found = os.path.getsize(path)
    if found != int(size):
        raise ConversionError(ExitCode.SOURCE_CHANGED, f"the staged input has {found} bytes, the version listed when "
                              f"the workflow was generated {size}: it was re-uploaded since; resubmit the row")
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != etag:
            raise ConversionError(ExitCode.SOURCE_CHANGED, "the staged input's MD5 is not the ETag listed when the "
                                  "workflow was generated: it was re-uploaded since; resubmit the row")


def _run_conversion(args: argparse.Namespace, metadata: Dict[str, str]) -> Tuple[int, str, str]:
    """Convert as the arguments say: (exit code, the stderr line, the verbose summary); every failure becomes a
    code and one line."""
    try:
        if env("COG_PIPELINE_VERIFY_SOURCE") == "1":
            check_source(args.input, metadata)
        backend = loaded_backend()
        if backend is not None and not args.verbose:
            backend.quiet()
        if args.metadata_b64 is not None:  # what only the worker knows: its GDAL, and when it wrote the COG
            metadata.setdefault("GDAL_VERSION", str(getattr(backend, "version", "unknown")))
            metadata.setdefault("CREATED_UTC", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        result = convert(args.input, args.output_tif, args.output_jpg, args.bands, profile=args.profile,
                         threads=args.threads, verify_pixels=args.verify_pixels, metadata=metadata,
                         memory_budget_mb=args.memory_budget)
        code: int = result.exit_code
        line = f"{ExitCode(code).name}: {result.reason}" if code else ""
        if code == ExitCode.BAND_MISMATCH and env("COG_PIPELINE_BAND_MISMATCH").lower() == "warn":
            # Inside a workflow the file wins: the outputs are verified, so the job succeeds (every engine,
            # DAGMan included, treats non-zero as failure) and the mismatch stays on record as this line.
            code, line = ExitCode.OK, f"WARNING {line}"
        if code == ExitCode.OK and not line and result.preview_uniform is not None:
            # Converted and verified, but the picture is one flat value: an operator cannot tell it from an empty
            # image, so the row's record (and report) says so.
            line = (f"WARNING PREVIEW_UNIFORM: every sample of the JPEG preview is {result.preview_uniform}: "
                    "check the source")
        return code, line, _summary(result)
    except ConversionError as exc:
        return exc.code, exc.line, ""
    except KeyboardInterrupt:
        return ExitCode.INTERNAL, "INTERNAL: interrupted", ""
    except MemoryError:
        return ExitCode.INTERNAL, "INTERNAL: out of memory", ""
    except Exception as exc:  # noqa: BLE001 - the contract is an exit code and one line
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ExitCode.OUT_OF_DISK, f"OUT_OF_DISK: {exc}", ""
        return ExitCode.INTERNAL, f"INTERNAL: {type(exc).__name__}: {exc}", ""


def _summary(result: ConversionResult) -> str:
    """The --verbose line on stdout: what was written, how, and where the time went."""
    uniform = "" if result.preview_uniform is None else f"preview uniform (every sample {result.preview_uniform}), "
    return (f"{result.cog}: {result.width}x{result.height}x{result.bands} {result.dtype}, overviews "
            f"{result.overview_sizes}, valid; {result.jpeg}: {result.jpeg_size[0]}x{result.jpeg_size[1]}x"
            f"{result.jpeg_bands} ({result.preview}); {result.backend} GDAL {result.gdal_version}, {result.threads} "
            f"threads, {result.profile}, jpeg {result.jpeg_method}, budget {result.memory_budget_mb} MB, cache "
            f"{result.cachemax_mb} MB, {uniform}" + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))

if __name__ == "__main__":
    sys.exit(main())
