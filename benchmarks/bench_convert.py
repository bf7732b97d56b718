#!/usr/bin/env python3
"""Benchmark: the original tool's two gdal_translate steps vs transformations/generate_cog.

Not part of the test run. Generates realistic large inputs under benchmarks/data/ (git-ignored)
by resampling and mirror-tiling the real scenes in ../shared/testdata (Landsat RGB + a NIR-like
band), striped and uncompressed like the county imagery, then times, side by side in one run
and on the SAME GDAL build:

  original: gdal_translate IN tmp.tif -of COG -co COMPRESS=LZW
            gdal_translate tmp.tif OUT.jpg -of JPEG -co QUALITY=80 [-b 1 -b 2 -b 3]
  ours:     generate_cog IN OUT.tif OUT.jpg --bands N

--gdal system (default): both on the system GDAL (the `gdal_translate` binary and
/usr/bin/python3 with osgeo.gdal: the stock-container stand-in). --gdal rasterio: both on the
GDAL bundled with rasterio (the original steps through rasterio.shutil.copy, which is the same
GDALCreateCopy call gdal_translate makes, with a band-subset VRT for -b 1 -b 2 -b 3); ours there converts on
the venv's binding, rasterio's. "ours" is the zipapp built from transformations/ (or --ours FILE, e.g. another
checkout's converter).

Each contender runs as its own process; wall time, CPU time (user+sys) and peak RSS come from
wait4(). Rounds alternate original/ours; the table shows the median per contender. Prints
timings, never asserts them.

    .venv/bin/python benchmarks/bench_convert.py                 # 4-band 10000x10000, 3 rounds
    .venv/bin/python benchmarks/bench_convert.py --bands 1 3 4 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
#: Inputs are cached outside the repository (a 40000x40000 4-band input is several GB).
DATA = Path(os.environ.get("COG_BENCH_DATA", "/tmp/cog-bench-data"))
TESTDATA = REPO.parent / "shared" / "testdata" / "rasterio"
VENV_PYTHON = sys.executable


def make_input(path: Path, size: int, bands: int, compress: str = "none") -> Path:
    """A size x size uint8 striped GeoTIFF (uncompressed, or LZW) built from real imagery."""
    if path.exists():
        return path
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    with rasterio.open(TESTDATA / "RGB.byte.tif") as src:  # interior of the Landsat scene, x1.5 cubic
        rgb = src.read(window=((80, 600), (170, 630)), out_shape=(3, 780, 690), resampling=Resampling.cubic)
    with rasterio.open(TESTDATA / "rgb1_fake_nir_epsg3857.tif") as src:
        nir = src.read(1, window=((221, 459), (219, 457)), out_shape=(780, 690), resampling=Resampling.cubic)
    base = np.maximum(np.concatenate([rgb, nir[None]]), 1)  # no accidental zeros
    row = np.concatenate([base, base[:, :, ::-1]], axis=2)  # mirror tiling: no seams
    tile = np.concatenate([row, row[:, ::-1, :]], axis=1)
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:26916",
        transform=from_origin(600000.0, 5000000.0, 0.3, 0.3),
    )
    if compress != "none":
        profile.update(compress=compress.upper(), bigtiff="IF_SAFER")
    if bands == 3:
        profile.update(photometric="RGB")
    elif bands == 4:
        profile.update(photometric="RGB", alpha="UNSPECIFIED")  # RGB + NIR, like county orthos
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        step = 1024
        for y in range(0, size, step):
            h = min(step, size - y)
            rows = np.arange(y, y + h) % tile.shape[1]
            cols = np.arange(size) % tile.shape[2]
            block = tile[:bands][:, rows][:, :, cols]
            dst.write(np.ascontiguousarray(block), window=((y, y + h), (0, size)))
    tmp.rename(path)
    return path


#: Runs one command and reports its own child's usage. A fresh, tiny process (python -S, stdlib only):
#: a child's ru_maxrss counts the pages it shared with its parent at fork, so measuring from this
#: benchmark's process (numpy, rasterio, earlier sizes' buffers) inflated the peak-RSS column.
_MEASURE = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, status = os.waitpid(pid, 0)
wall = time.perf_counter() - t0
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall": wall, "cpu": u.ru_utime + u.ru_stime,
                  "rss": u.ru_maxrss / 1024}))
"""


#: --one-cpu: every contender pinned to CPU 0 with one GDAL thread, standing in for an HTCondor slot
#: with request_cpus = 1.
ONE_CPU = {"on": False}


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run one process in a fresh measuring process; wall seconds, CPU seconds and peak RSS (MiB)."""
    import json

    env = dict(os.environ if env is None else env)
    if ONE_CPU["on"]:
        cmd = ["taskset", "-c", "0", *cmd]
        env.update(GDAL_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-S", "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    try:
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"{' '.join(cmd)}: measuring failed: {proc.stderr.strip()}") from None
    if r["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r['code']}): {proc.stderr.strip()}")
    return {"wall": r["wall"], "cpu": r["cpu"], "rss": r["rss"]}


RASTERIO_COPY = r"""
import sys, rasterio.shutil
src, dst, driver = sys.argv[1:4]
opts = dict(a.split("=", 1) for a in sys.argv[4:])
rasterio.shutil.copy(src, dst, driver=driver, strict=False, **opts)
"""


def original(gdal: str, src: Path, bands: int, out: Path) -> dict:
    cog, jpg = out / "orig.tif", out / "orig.jpg"
    band_args = [] if bands in (1, 3) else ["-b", "1", "-b", "2", "-b", "3"]
    if gdal == "system":
        step1 = ["gdal_translate", "-q", str(src), str(cog), "-of", "COG", "-co", "COMPRESS=LZW"]
        step2 = ["gdal_translate", "-q", str(cog), str(jpg), "-of", "JPEG", "-co", "QUALITY=80", *band_args]
    else:
        step1 = [VENV_PYTHON, "-c", RASTERIO_COPY, str(src), str(cog), "COG", "COMPRESS=LZW"]
        jpeg_src = cog
        if band_args:
            jpeg_src = out / "orig_b123.vrt"
        step2 = [VENV_PYTHON, "-c", RASTERIO_COPY, str(jpeg_src), str(jpg), "JPEG", "QUALITY=80"]
    a = run_measured(step1)
    if gdal != "system" and band_args:
        # The band-subset VRT (the -b 1 -b 2 -b 3 of step 2) can only describe the COG once step 1 wrote it.
        jpeg_src.write_text(_band_subset_vrt(cog, src_bands=[1, 2, 3]))
    b = run_measured(step2)
    return {
        "wall": a["wall"] + b["wall"], "cpu": a["cpu"] + b["cpu"], "rss": max(a["rss"], b["rss"]),
        "cog": cog, "jpg": jpg, "steps": f"COG {a['wall']:.1f}s + JPEG {b['wall']:.1f}s",
    }


def _band_subset_vrt(path: Path, src_bands: list[int]) -> str:
    import rasterio

    with rasterio.open(path) as ds:
        w, h = ds.width, ds.height
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{i}"><SimpleSource><SourceFilename relativeToVRT="0">{path}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for i, b in enumerate(src_bands, start=1)
    )
    return f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">{bands}</VRTDataset>'


def built_converter() -> Path:
    """The zipapp of this checkout's transformations/, built into a temporary folder."""
    sys.path.insert(0, str(REPO))
    from transformations.build import build_zipapp

    return build_zipapp(Path(tempfile.mkdtemp(prefix="generate_cog-bench-")))


def ours(gdal: str, src: Path, bands: int, out: Path, extra: list[str], exe: Path) -> dict:
    cog, jpg = out / "ours.tif", out / "ours.jpg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_PIPELINE_")}
    cmd = ["/usr/bin/python3" if gdal == "system" else VENV_PYTHON, str(exe)]
    r = run_measured(cmd + [str(src), str(cog), str(jpg), "--bands", str(bands), *extra], env=env)
    r.update(cog=cog, jpg=jpg, steps="")
    return r


def same_pixels(a: Path, b: Path) -> bool:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.count, x.width, x.height) != (y.count, y.width, y.height):
            return False
        return all(x.checksum(i) == y.checksum(i) for i in range(1, x.count + 1)) and all(
            np.array_equal(wx, wy)
            for (_, win) in x.block_windows(1)
            if win.row_off % 4096 == 0 and win.col_off == 0
            for wx, wy in [(x.read(window=win), y.read(window=win))]
        )


def gdal_version(gdal: str) -> str:
    if gdal == "system":
        return subprocess.run(["gdal_translate", "--version"], capture_output=True, text=True).stdout.strip()
    import rasterio

    return f"GDAL {rasterio.__gdal_version__} (bundled with rasterio {rasterio.__version__})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--bands", type=int, nargs="+", default=[4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gdal", choices=["system", "rasterio"], default="system")
    p.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp dir beside the data)")
    p.add_argument("--ours", type=Path, default=None, help="the converter to time (default: the zipapp built from transformations/)")
    p.add_argument("--compress", choices=["none", "lzw"], default="none", help="input compression")
    p.add_argument("--one-cpu", action="store_true", help="taskset -c 0 and GDAL_NUM_THREADS=1 for every contender")
    p.add_argument("--skip-original", action="store_true", help="time only ours (e.g. once at 40000x40000)")
    p.add_argument("ours_args", nargs="*", help="extra generate_cog options after --, e.g. -- --threads 2")
    args = p.parse_args()
    ONE_CPU["on"] = args.one_cpu
    args.ours = args.ours or built_converter()

    print(f"GDAL build for both contenders: {gdal_version(args.gdal)} ({args.gdal}); "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for bands in args.bands:
        src = make_input(DATA / f"bench_{args.size}_{bands}b_{args.compress}.tif", args.size, bands, args.compress)
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL)  # same warm page cache for both
        workdir = Path(tempfile.mkdtemp(prefix="bench_", dir=args.workdir or DATA))
        try:
            runs = {"original": [], "ours": []}
            if args.skip_original:
                for r in range(args.rounds):
                    n = ours(args.gdal, src, bands, workdir, args.ours_args, args.ours)
                    print(f"  {bands} bands round {r + 1}: ours {n['wall']:.2f}s wall {n['cpu']:.2f}s CPU "
                          f"{n['rss']:.0f} MiB peak, COG {n['cog'].stat().st_size / 1e6:.1f} MB, JPEG "
                          f"{n['jpg'].stat().st_size / 1e6:.2f} MB (load {os.getloadavg()[0]:.1f})", flush=True)
                continue
            for r in range(args.rounds):
                o = original(args.gdal, src, bands, workdir)
                n = ours(args.gdal, src, bands, workdir, args.ours_args, args.ours)
                runs["original"].append(o)
                runs["ours"].append(n)
                print(f"  {bands} bands round {r + 1}: original {o['wall']:.2f}s wall {o['cpu']:.2f}s CPU "
                      f"{o['rss']:.0f} MiB ({o['steps']}), ours {n['wall']:.2f}s wall {n['cpu']:.2f}s CPU "
                      f"{n['rss']:.0f} MiB -> {o['wall'] / n['wall']:.2f}x (load {os.getloadavg()[0]:.1f})", flush=True)
            identical = same_pixels(runs["original"][-1]["cog"], runs["ours"][-1]["cog"])
            sizes = {k: (v[-1]["cog"].stat().st_size, v[-1]["jpg"].stat().st_size) for k, v in runs.items()}
            med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu", "rss")} for k, v in runs.items()}
            best = {k: min(x["wall"] for x in v) for k, v in runs.items()}
            rows.append((bands, med, best, sizes, identical))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    if args.skip_original:
        print("--skip-original: the rounds above are the whole result (no original to set a ratio against).")
        return 0
    print(f"{args.size}x{args.size} uint8, striped {'uncompressed' if args.compress == 'none' else args.compress.upper()} input; "
          f"{'one CPU (taskset -c 0, GDAL_NUM_THREADS=1); ' if args.one_cpu else ''}median of {args.rounds} round(s)")
    head = f"{'bands':>5} {'contender':>9} {'wall s':>7} {'best s':>7} {'CPU s':>6} {'peak RSS MiB':>12} {'COG MB':>8} {'JPEG MB':>8}"
    print(head)
    print("-" * len(head))
    for bands, med, best, sizes, identical in rows:
        for k in ("original", "ours"):
            print(f"{bands:>5} {k:>9} {med[k]['wall']:>7.2f} {best[k]:>7.2f} {med[k]['cpu']:>6.2f} "
                  f"{med[k]['rss']:>12.0f} {sizes[k][0] / 1e6:>8.1f} {sizes[k][1] / 1e6:>8.1f}")
        print(f"{bands:>5} {'ratio':>9} {med['original']['wall'] / med['ours']['wall']:>6.2f}x "
              f"{best['original'] / best['ours']:>6.2f}x {med['original']['cpu'] / med['ours']['cpu']:>5.2f}x "
              f"{med['original']['rss'] / med['ours']['rss']:>11.2f}x "
              f"{sizes['original'][0] / sizes['ours'][0]:>7.2f}x {sizes['original'][1] / sizes['ours'][1]:>7.2f}x"
              f"   full-res pixels identical: {identical}")
    print("\nratio = original / ours (higher is better for ours in every column).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
