#!/usr/bin/env python3
"""Where each second of one conversion goes, against the floor, side by side in one run (issue 10).

The floor is one read of the input + one LZW pass over the full resolution (with the predictor) + GDAL's
overview pyramid (cubic, compressed) + one JPEG encode (libjpeg-turbo). Each part is timed alone, in this
process (CPU seconds, median of --rounds, warm page cache), on the venv's GDAL (rasterio's wheels) and
Pillow's libjpeg-turbo, the build the local engine converts with. Then the converter's own phases
(`convert()` in-process, as a pool worker runs it, after a warm-up conversion), the original tool's two
steps (Debian's gdal_translate, each a process: start-up included, CPU from wait4) and the start-up a
worker pays once (a fresh interpreter importing the converter and loading GDAL).

    .venv/bin/python benchmarks/bench_phases.py [--size 2500] [--bands 4] [--rounds 3] [--one-cpu]

Prints a table; never asserts. --one-cpu pins everything to core 0 with one GDAL thread (a CHTC slot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", module="rasterio")  # NotGeoreferencedWarning of the plain benchmark tiles
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import batch_inputs  # noqa: E402
from bench_batch import original_commands  # noqa: E402  (the original tool's two steps, defined once)


def cpu_of(fn: Callable[[], object], rounds: int) -> float:
    """Median CPU seconds (this process, all threads) of ``fn``."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def child_cpu(cmd: list[str], rounds: int) -> float:
    """Median user+sys CPU of a command run as its own process."""
    times = []
    for _ in range(rounds):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        times.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(times)


def floor_parts(src: Path, work: Path, bands: int, rounds: int) -> dict[str, float]:
    import numpy as np
    import rasterio
    import rasterio.shutil
    from PIL import Image

    tiled = dict(driver="GTiff", TILED="YES", BLOCKXSIZE="512", BLOCKYSIZE="512", INTERLEAVE="PIXEL")
    plain, lzw = work / "plain.tif", work / "lzw.tif"

    def read() -> None:
        with rasterio.open(src) as ds:
            ds.read()

    def copy_plain() -> None:
        rasterio.shutil.copy(src, plain, **tiled)

    def copy_lzw() -> None:
        rasterio.shutil.copy(src, lzw, COMPRESS="LZW", PREDICTOR="2", **tiled)

    vrt = work / "plain.vrt"

    def overviews() -> None:  # GDAL's multi-level builder into an external .ovr, as the COG driver computes it
        for p in work.glob("plain.vrt.ovr"):
            p.unlink()
        with rasterio.Env(COMPRESS_OVERVIEW="LZW", PREDICTOR_OVERVIEW="2", INTERLEAVE_OVERVIEW="PIXEL",
                          GDAL_TIFF_OVR_BLOCKSIZE="512"):
            with rasterio.open(vrt, "r+") as ds:
                width = ds.width
                factors, f = [], 2
                while width // f > 256:
                    factors.append(f)
                    f *= 2
                ds.build_overviews(factors, rasterio.enums.Resampling.cubic)

    with rasterio.open(src) as ds:
        pixels = np.ascontiguousarray(np.moveaxis(ds.read(list(range(1, min(bands, 4) + 1))), 0, -1))
    mode = {1: "L", 3: "RGB", 4: "RGBX"}[pixels.shape[-1]]

    def jpeg() -> None:
        image = Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)
        image.save(work / "floor.jpg", format="JPEG", quality=80, optimize=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = {"read": cpu_of(read, rounds)}
        copy_plain()
        rasterio.shutil.copy(plain, vrt, driver="VRT")
        plain_cpu = cpu_of(copy_plain, rounds)
        parts["LZW of the full resolution"] = max(0.0, cpu_of(copy_lzw, rounds) - plain_cpu)
        parts["overview pyramid (cubic + LZW)"] = cpu_of(overviews, rounds)
        parts["JPEG encode (libjpeg-turbo)"] = cpu_of(jpeg, rounds)
    return parts


def ours(src: Path, work: Path, bands: int, rounds: int) -> tuple[float, dict[str, float], str]:
    from cog_pipeline.transformations.convert import convert

    convert(src, work / "warm.tif", work / "warm.jpg", bands, threads=1)  # imports, first GDAL opens
    timings: list[dict[str, float]] = []
    method = ""

    def once() -> None:
        nonlocal method
        result = convert(src, work / "o.tif", work / "o.jpg", bands, threads=1)
        timings.append(result.timings)
        method = f"cog driver, jpeg {result.jpeg_method}"

    total = cpu_of(once, rounds)
    phases = {k: statistics.median(t.get(k, 0.0) for t in timings) for k in timings[0]}
    return total, phases, method


def startup(python: str) -> float:
    code = ("from cog_pipeline.transformations import cli\n"
            "from cog_pipeline.transformations.backend import get_backend\nget_backend()\n")
    return child_cpu([python, "-c", code], 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2500)
    p.add_argument("--bands", type=int, default=4, choices=[1, 3, 4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one-cpu", action="store_true")
    args = p.parse_args(argv)
    if args.one_cpu:
        os.sched_setaffinity(0, {0})
        os.environ["GDAL_NUM_THREADS"] = "1"
    src = batch_inputs.images(batch_inputs.input_set(1, args.size, args.bands))[0][1]
    work = Path(tempfile.mkdtemp(prefix="bench-phases-"))
    try:
        floor = floor_parts(src, work, args.bands, args.rounds)
        total, phases, method = ours(src, work, args.bands, args.rounds)
        orig = sum(child_cpu(cmd, args.rounds) for cmd in original_commands(src, args.bands, work))
        start = startup(sys.executable)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor_total = sum(floor.values())
    print(f"{args.size}² {args.bands}-band uint8, {'one CPU' if args.one_cpu else 'all CPUs'}, median of "
          f"{args.rounds}; {method}; load {os.getloadavg()[0]:.2f}")
    print(f"{'floor part':<34} {'CPU-s':>7}")
    for name, value in floor.items():
        print(f"{name:<34} {value:7.3f}")
    print(f"{'floor total':<34} {floor_total:7.3f}")
    print(f"\n{'convert() phase (wall, one thread)':<34} {'s':>7}")
    for name, value in phases.items():
        print(f"{name:<34} {value:7.3f}")
    print(f"\nconvert() in a warm worker: {total:.3f} CPU-s = {total / floor_total:.2f}x the floor")
    print(f"original two steps (two gdal_translate processes): {orig:.3f} CPU-s = {orig / floor_total:.2f}x the floor; "
          f"ours / original = {total / orig:.2f}")
    print(f"worker start-up, paid once per worker: {start:.3f} CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
