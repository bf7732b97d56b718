#!/usr/bin/env python3
"""Batch benchmark: cog-pipeline vs the original tool on many images, side by side in one run.

Run by hand, never by the tests. The headline single-image speed-up says little about the work the
pipeline does (many images of 1000-5000 px), so this times whole batches, each contender as a user
would run it, in alternating order within each round:

  scan          cog-pipeline scan --engine local with its defaults (fresh folder buckets and work dir
                every round; the manifest is claimed, converted and reconciled)
  orig-seq      the original tool's two steps (bench_convert.original's commands: gdal_translate to COG,
                then the COG to JPEG), image after image
  orig-xargs    the same per-image pair of steps, `xargs -P <cores>`
  skilled       the best two gdal_translate commands: COG with PREDICTOR=2 NUM_THREADS=ALL_CPUS, and the
                JPEG from the source at the same time; image after image
  skilled-xargs the skilled pair, `xargs -P <cores>`
  convert       (not by default) the generate_cog zipapp (built from transformations/) per image under the
                venv, no engine: separates the engine's cost from the converter's
  convert-sys   the same zipapp under /usr/bin/python3 and Debian's GDAL (the worker container's stand-in):
                one cold process per image, as an unclustered Pegasus job runs it
  main-scan, main-convert-sys
                the same as scan and convert-sys for another checkout (--baseline, default /work/main: its own
                .venv and its committed or built zipapp), measured side by side in the same rounds

Each contender runs under a small launcher (`/usr/bin/time -f %M`, forked from this process), so its
peak RSS is the largest of its own processes (wait4 reports the maximum over reaped descendants:
xargs workers, pool workers, converter processes), never this big Python parent's. CPU seconds are the
launcher's wait4() rusage (user+sys of every descendant). Medians of --rounds.

--one-cpu stands in for an HTCondor slot (request_cpus = 1): every contender under `taskset -c 0` with
GDAL_NUM_THREADS=1 and OMP_NUM_THREADS=1 (HTCondor sets the latter to the slot's CPUs), reporting per-image
times at each size; the xargs contenders are left out there (with one core they are the sequential ones).

    .venv/bin/python benchmarks/bench_batch.py --count 24 --sizes 2500 --bands 4 --rounds 3
    .venv/bin/python benchmarks/bench_batch.py --one-cpu --count 4 --sizes 1000 2500 5000 [--with-10000]
    .venv/bin/python benchmarks/bench_batch.py ... --compress none lzw --json results.json
    .venv/bin/python benchmarks/bench_batch.py --count 12 --sizes 2000 --bands 4 --alpha no yes \
        --contenders scan main-scan orig-xargs          # RGB+NIR and RGBA, against today's main
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import batch_inputs  # noqa: E402
import bench_convert  # noqa: E402  (the original tool's commands live there)

VENV_BIN = Path(sys.executable).parent
COG_PIPELINE = VENV_BIN / "cog-pipeline"
SYSTEM_PYTHON = "/usr/bin/python3"
ALL_CONTENDERS = ["scan", "orig-seq", "orig-xargs", "skilled", "skilled-xargs", "convert", "convert-sys",
                  "main-scan", "main-convert-sys"]
DEFAULT_CONTENDERS = ALL_CONTENDERS[:5]
ORIGINALS = ["orig-seq", "orig-xargs"]
BENCH_START = time.monotonic()


def original_commands(src: Path, bands: int, out: Path) -> list[list[str]]:
    """The original tool's two commands for one image, exactly as bench_convert.original builds them.

    bench_convert.original() runs the steps itself; its command lists are captured by standing in for its
    run_measured() for the duration of the call, so the commands are defined in one place only.
    """
    captured: list[list[str]] = []
    saved = bench_convert.run_measured
    bench_convert.run_measured = lambda cmd, env=None: captured.append(list(cmd)) or {"wall": 0.0, "cpu": 0.0, "rss": 0.0}
    try:
        bench_convert.original("system", src, bands, out)
    finally:
        bench_convert.run_measured = saved
    if len(captured) != 2:
        raise SystemExit(f"bench_convert.original() ran {len(captured)} commands, expected its 2 steps")
    return captured


def skilled_script(src: Path, bands: int, out: Path) -> str:
    """The two gdal_translate commands a skilled user writes: better COG options, JPEG from the source, in parallel."""
    step2 = original_commands(src, bands, out)[1]
    band_args = step2[step2.index("QUALITY=80") + 1:]  # the original's band selection for the preview
    cog = ["gdal_translate", "-q", str(src), str(out / "cog.tif"), "-of", "COG", "-co", "COMPRESS=LZW",
           "-co", "PREDICTOR=2", "-co", "NUM_THREADS=ALL_CPUS"]
    jpg = ["gdal_translate", "-q", str(src), str(out / "preview.jpg"), "-of", "JPEG", "-co", "QUALITY=80", *band_args]
    return f"{shlex.join(cog)} & a=$!\n{shlex.join(jpg)} & b=$!\nwait $a && wait $b\n"


@dataclass
class Plan:
    """One contender's run: a shell script for the launcher, where its outputs land, what to check."""

    script: str
    outputs: Path
    expect_files: int
    check: Optional[Callable[[], None]] = None


def _per_image_dirs(work: Path, imgs: list[tuple[str, Path]]) -> list[Path]:
    dirs = [work / "out" / f"{i:04d}" for i in range(len(imgs))]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _xargs(work: Path, jobs: list[str], cores: int) -> str:
    """A job script per image and one xargs line running them <cores> wide."""
    listing = work / "jobs.txt"
    paths = []
    for i, body in enumerate(jobs):
        p = work / f"job_{i:04d}.sh"
        p.write_text("set -e\n" + body)
        paths.append(str(p))
    listing.write_text("\n".join(paths) + "\n")
    return f"xargs -P {cores} -n 1 -d '\\n' sh < {shlex.quote(str(listing))}\n"


def converter_of(checkout: Path, scratch: Path) -> Path:
    """A checkout's generate_cog: built from its transformations/ where it has build_zipapp, else its committed file."""
    committed = checkout / "transformations" / "generate_cog"
    if (checkout / "transformations" / "build.py").read_text().find("def build_zipapp") < 0:
        return committed
    out = scratch / f"zipapp-{checkout.name}"
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    "from transformations.build import build_zipapp; build_zipapp(sys.argv[2])",
                    str(checkout), str(out)], check=True)
    return out / "generate_cog"


BASELINE = Path("/work/main")
CONVERTERS: dict[str, Path] = {}  # "self" and "main": set up once in main()


def make_plan(name: str, work: Path, inputs: Path, bands: int, cores: int) -> Plan:
    """Set up (untimed) everything one contender needs in the fresh folder `work`."""
    imgs = batch_inputs.images(inputs)
    n = len(imgs)
    if name in ("scan", "main-scan"):
        root = work / "buckets"
        for key, path in imgs:
            dest = root / "in" / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)  # same bytes, no copy: the folder store reads them like any file
        (root / "in" / batch_inputs.KEY_PREFIX / "bench_raw.csv").write_bytes((inputs / "manifest.csv").read_bytes())
        (root / "out").mkdir()
        (work / "runs").mkdir()
        exe = COG_PIPELINE if name == "scan" else BASELINE / ".venv" / "bin" / "cog-pipeline"
        cmd = [str(exe), "scan", "--input-bucket", "in", "--output-bucket", "out",
               "--local-root", str(root), "-w", str(work / "runs"), "--engine", "local"]

        def check() -> None:
            processed = list((root / "in").rglob("*processed-*.csv"))
            failed = list((root / "in").rglob("*failed-*.csv"))
            rows = sum(len([r for r in p.read_text().splitlines() if r]) for p in processed)
            if failed or rows != n:
                raise SystemExit(f"scan: {rows} of {n} rows processed, failed files: {[str(f) for f in failed]}")

        return Plan(shlex.join(cmd) + "\n", root / "out", 2 * n, check)
    dirs = _per_image_dirs(work, imgs)
    if name in ("orig-seq", "orig-xargs"):
        jobs = ["".join(shlex.join(c) + "\n" for c in original_commands(p, bands, d)) for (_, p), d in zip(imgs, dirs)]
    elif name in ("skilled", "skilled-xargs"):
        jobs = [skilled_script(p, bands, d) for (_, p), d in zip(imgs, dirs)]
    elif name in ("convert", "convert-sys", "main-convert-sys"):
        python = sys.executable if name == "convert" else SYSTEM_PYTHON
        exe = CONVERTERS["main" if name.startswith("main-") else "self"]
        jobs = [shlex.join([python, str(exe), str(p), str(d / "x.tif"), str(d / "x.jpg"),
                            "--bands", str(bands)]) + "\n" for (_, p), d in zip(imgs, dirs)]
    else:
        raise SystemExit(f"unknown contender {name!r}")
    script = _xargs(work, jobs, cores) if name.endswith("-xargs") else "set -e\n" + "".join(jobs)
    return Plan(script, work / "out", 2 * n)


def run_launched(script: str, work: Path, env: dict[str, str], one_cpu: bool) -> dict:
    """Run `sh script` under /usr/bin/time (and taskset): wall, CPU of all descendants, peak RSS of the largest."""
    script_path, rss_path, log_path = work / "contender.sh", work / "rss.txt", work / "contender.log"
    script_path.write_text(script)
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss_path), "sh", str(script_path)]
    if one_cpu:
        cmd = ["taskset", "-c", "0", *cmd]
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"contender failed ({proc.returncode}), script {script_path}: {' | '.join(tail)}")
    rss_lines = [line for line in rss_path.read_text().split() if line.isdigit()]
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": int(rss_lines[-1]) / 1024}


def contender_env(one_cpu: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COG_PIPELINE_", "GDAL_", "CPL_"))}
    env.pop("OMP_NUM_THREADS", None)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")])
    if one_cpu:
        env.update(GDAL_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


def run_one(name: str, inputs: Path, bands: int, cores: int, one_cpu: bool, scratch: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    try:
        plan = make_plan(name, work, inputs, bands, cores)
        result = run_launched(plan.script, work, contender_env(one_cpu), one_cpu)
        outs = [p for p in plan.outputs.rglob("*") if p.is_file() and p.suffix in (".tif", ".jpg")]
        if len(outs) != plan.expect_files:
            raise SystemExit(f"{name}: {len(outs)} output files, expected {plan.expect_files} (in {work})")
        if plan.check:
            plan.check()
        result["bytes_out"] = sum(p.stat().st_size for p in outs)
        result["load1"] = os.getloadavg()[0]
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(runs: list[dict], n: int) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "rss_mib", "bytes_out")}
    med.update(wall_min=min(r["wall"] for r in runs), wall_max=max(r["wall"] for r in runs),
               cpu_per_image=med["cpu"] / n, wall_per_image=med["wall"] / n, images_per_s=n / med["wall"],
               rss_max=max(r["rss_mib"] for r in runs))
    return med


def ratios(summary: dict[str, dict]) -> dict[str, dict]:
    """Per contender, vs each original contender: wall speed-up (orig/this) and CPU fraction (this/orig)."""
    out: dict[str, dict] = {}
    for name, s in summary.items():
        out[name] = {}
        for ref in ORIGINALS:
            if ref in summary and ref != name:
                r = summary[ref]
                out[name][ref] = {"speedup": r["wall"] / s["wall"], "cpu_fraction": s["cpu"] / r["cpu"],
                                  "rss_fraction": s["rss_mib"] / r["rss_mib"], "bytes_fraction": s["bytes_out"] / r["bytes_out"]}
    return out


def print_table(title: str, n: int, summary: dict[str, dict], rat: dict[str, dict], rounds: int) -> None:
    print(f"\n{title}: {n} images, median of {rounds} round(s)")
    head = (f"{'contender':<14}{'wall s':>8}{'min-max':>13}{'s/img':>7}{'CPU-s/img':>10}{'peak RSS':>10}"
            f"{'img/s':>7}{'MB out':>8}  {'vs orig-seq':>19}  {'vs orig-xargs':>19}")
    print(head)
    print("-" * len(head))
    for name, s in summary.items():
        cells = []
        for ref in ORIGINALS:
            r = rat[name].get(ref)
            cells.append(f"{r['speedup']:5.2f}x wall {r['cpu_fraction']:4.2f} CPU" if r else "")
        print(f"{name:<14}{s['wall']:>8.2f}{s['wall_min']:>6.1f}-{s['wall_max']:<6.1f}{s['wall_per_image']:>7.2f}"
              f"{s['cpu_per_image']:>10.2f}{s['rss_mib']:>7.0f}MiB{s['images_per_s']:>7.2f}{s['bytes_out'] / 1e6:>8.1f}"
              f"  {cells[0]:>19}  {cells[1]:>19}")
    print("wall: orig/this (>1 = faster than the original); CPU: this/orig (<1 = less CPU). "
          "Peak RSS: largest single process, median over rounds.")


def run_config(args, contenders: list[str], size: int, bands: int, compress: str, cores: int, scratch: Path,
               alpha: bool = False) -> dict:
    inputs = batch_inputs.input_set(args.count, size, bands, compress, args.gray_source, args.cache, alpha)
    for _, path in batch_inputs.images(inputs):  # same warm page cache for every contender
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    started = time.monotonic()
    for rnd in range(args.rounds):
        per_round = (time.monotonic() - started) / max(rnd, 1)
        if rnd and args.budget_minutes and (time.monotonic() - BENCH_START) + per_round > args.budget_minutes * 60:
            print(f"  stopping after {rnd} round(s): another would pass --budget-minutes {args.budget_minutes}")
            break
        order = contenders[rnd % len(contenders):] + contenders[:rnd % len(contenders)]
        for name in order:
            r = run_one(name, inputs, bands, cores, args.one_cpu, scratch)
            runs[name].append(r)
            print(f"  {size}² {bands}b{'+alpha' if alpha else ''} {compress} round {rnd + 1} {name:<14} {r['wall']:7.2f}s wall {r['cpu']:7.2f} CPU-s "
                  f"{r['rss_mib']:6.0f} MiB {r['bytes_out'] / 1e6:8.1f} MB out  (load {r['load1']:.2f})", flush=True)
    rounds_done = len(runs[contenders[-1]])
    runs = {c: r[:rounds_done] for c, r in runs.items()}  # only complete rounds
    summary = {c: summarise(runs[c], args.count) for c in contenders}
    rat = ratios(summary)
    mode = "one CPU (taskset -c 0, GDAL_NUM_THREADS=1)" if args.one_cpu else f"{cores} cores"
    kind = f"{bands}-band uint8" + (" (last band alpha)" if alpha else "")
    print_table(f"{size}x{size} {kind}, {compress} input, {mode}", args.count, summary, rat, rounds_done)
    return {"size": size, "rounds": rounds_done, "bands": bands, "alpha": alpha, "compress": compress,
            "count": args.count, "inputs": str(inputs),
            "runs": runs, "summary": summary, "ratios": rat}


def machine_info() -> dict:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError as exc:
            return f"unavailable: {exc}"

    import rasterio

    return {"cpus": len(os.sched_getaffinity(0)), "uptime": out(["uptime"]),
            "system_gdal": out(["gdal_translate", "--version"]), "venv_gdal": rasterio.__gdal_version__,
            "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=24, help="images per batch (default 24)")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="image sizes in px (default: 2500; with --one-cpu: 1000 2500 5000)")
    p.add_argument("--with-10000", action="store_true", help="also 10000x10000")
    p.add_argument("--bands", type=int, nargs="+", default=[4], choices=[1, 2, 3, 4])
    p.add_argument("--alpha", nargs="+", default=["no"], choices=["no", "yes"],
                   help="the last band an alpha band (2 and 4 bands only): no, yes or both")
    p.add_argument("--baseline", type=Path, default=BASELINE, help="the checkout main-* contenders run (its .venv)")
    p.add_argument("--compress", nargs="+", default=["none"], choices=["none", "lzw"], help="input compression(s)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contenders", nargs="+", default=None, choices=ALL_CONTENDERS,
                   help=f"default: {' '.join(DEFAULT_CONTENDERS)} (with --one-cpu: no xargs ones)")
    p.add_argument("--one-cpu", action="store_true", help="every contender under taskset -c 0, GDAL_NUM_THREADS=1")
    p.add_argument("--gray-source", choices=["landsat", "shade"], default="landsat", help="content of 1-band images")
    p.add_argument("--cache", type=Path, default=batch_inputs.DEFAULT_CACHE, help="generated inputs (outside the repo)")
    p.add_argument("--scratch", type=Path, default=None, help="where outputs go while a contender runs (default: a temp dir)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no round that would end past this many minutes (a loaded machine: fewer rounds)")
    p.add_argument("--json", type=Path, default=None, help="write every round and the summary here")
    return p.parse_args(argv)


#: The project's own packages (an editable install: they are not in site-packages).
PROJECT_PACKAGES = ("cog_pipeline", "transformations", "pegasus", "replicas", "crondor")


def compile_project(root: Path = REPO) -> str:
    """Compile a checkout's modules into their __pycache__ (untimed set-up), as an installed package has them.

    Why: with PYTHONDONTWRITEBYTECODE=1 in the environment (set on the development machine) an editable
    checkout never caches bytecode, so every process compiled every project module it imports from source
    (measured 0.19 s in a scan's process and ~0.12 s in each worker), a cost no pip-installed copy pays
    (pip compiles at install) and any other checkout pays once. The environment itself is left as it is.
    Both checkouts are compiled when main-* contenders run, so neither side pays it."""
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(root / p) for p in PROJECT_PACKAGES)],
                          capture_output=True, text=True, check=False)
    env = "PYTHONDONTWRITEBYTECODE=1" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "bytecode written normally"
    return f"{root}: compiled into __pycache__ ({env})" if proc.returncode == 0 else f"{root}: compileall failed: {proc.stderr.strip()[-200:]}"


def checkout_of(python: Path) -> Path:
    """The checkout whose code `python` (a venv's interpreter, hence its cog-pipeline) imports."""
    out = subprocess.run([str(python), "-c", "import cog_pipeline; print(cog_pipeline.__file__)"],
                         capture_output=True, text=True, check=True, cwd="/").stdout  # no checkout in the cwd
    return Path(out.strip()).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("gdal_translate") is None:
        raise SystemExit("gdal_translate not found: apt-get install -y gdal-bin python3-gdal")
    sizes = args.sizes or ([1000, 2500, 5000] if args.one_cpu else [2500])
    if args.with_10000 and 10000 not in sizes:
        sizes.append(10000)
    cores = 1 if args.one_cpu else len(os.sched_getaffinity(0))
    contenders = args.contenders or [c for c in DEFAULT_CONTENDERS if not (args.one_cpu and c.endswith("-xargs"))]
    info = machine_info()
    # An editable install runs the checkout it was installed from, wherever this script is: `scan` must time
    # this checkout (run the script with its own venv), main-* the baseline's.
    timed = {"scan": (VENV_BIN / "python", REPO), "main-scan": (args.baseline / ".venv" / "bin" / "python", args.baseline)}
    for name, (python, expected) in timed.items():
        if name in contenders and checkout_of(python) != expected.resolve():
            raise SystemExit(f"{name} would run the code of {checkout_of(python)}, not {expected}: "
                             f"run it with a venv installed from {expected} (pip install -e)")
    checkouts = dict.fromkeys([REPO, *([args.baseline] if any(c.startswith("main-") for c in contenders) else [])])
    info["bytecode"] = "; ".join(compile_project(root) for root in checkouts)
    print(f"{info['cpus']} CPUs; system {info['system_gdal']}; venv GDAL {info['venv_gdal']}; {info['uptime']}", flush=True)
    print(f"project bytecode: {info['bytecode']}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="cog-bench-run-", dir=args.scratch))
    global BASELINE
    BASELINE = args.baseline
    CONVERTERS.update(self=converter_of(REPO, scratch), main=converter_of(BASELINE, scratch))
    started = time.monotonic()
    configs = []
    try:
        for compress in args.compress:
            for bands in args.bands:
                for alpha in args.alpha:
                    if alpha == "yes" and bands not in (2, 4):
                        continue
                    for size in sizes:
                        configs.append(run_config(args, contenders, size, bands, compress, cores, scratch,
                                                  alpha == "yes"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\nafter: {info['uptime_after']}; benchmark took {info['elapsed_s']} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) if isinstance(v, Path) else v
                                                                   for k, v in vars(args).items()},
                                         "one_cpu": args.one_cpu, "configs": configs}, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
