"""One scan of a huge manifest through the local engine on folder buckets: peak memory and the run files' sizes.

    .venv/bin/python benchmarks/bench_scale.py [--rows 2000000] [--dir /tmp/scale-bench]

The manifest holds `--rows` rows (about 19 bytes each, like a real 2,000,000-row, 39 MB manifest): a few
real images that are converted, a few malformed rows and duplicates, and the rest keys whose objects are
missing, so they fail at preflight. That exercises the manifest parser, preflight, reconcile, the report and
the result files at full size without converting millions of images. The scan runs as its own process under
`/usr/bin/time -v` (peak RSS); the script prints that, the wall time and the size of every run file.
Never run by the tests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REAL = 3  # rows whose images exist and are converted


def write_buckets(root: Path, rows: int) -> Path:
    from cog_pipeline.examples import write_raster

    (root / "out").mkdir(parents=True)
    inp = root / "in"
    for i in range(REAL):
        write_raster(inp / f"real/img{i}.tif", 3, size=64, seed=i)
    manifest = inp / "big_raw.csv"
    with open(manifest, "wb") as fh:
        for i in range(REAL):
            fh.write(f"real/img{i}.tif,3\n".encode())
        fh.write(b"not a row\n")
        fh.write(b"real/img0.tif,3\n")  # a duplicate of line 1
        chunk = []
        for i in range(rows - REAL - 2):
            chunk.append(f"m/{i:010d}.tif,3\n")
            if len(chunk) == 65536:
                fh.write("".join(chunk).encode())
                chunk.clear()
        fh.write("".join(chunk).encode())
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scale-bench"))
    args = parser.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    root, work = args.dir / "buckets", args.dir / "work"
    manifest = write_buckets(root, args.rows)
    print(f"manifest: {args.rows:,} rows, {manifest.stat().st_size / 1e6:.1f} MB")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(root),
           "--input-bucket", "in", "--output-bucket", "out", "--work-dir", str(work), "--quiet", "--workers", "1"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    timed = dict(line.strip().rsplit(": ", 1) for line in proc.stderr.splitlines() if line.startswith("\t") and ": " in line)
    rss, cpu = int(timed["Maximum resident set size (kbytes)"]), float(timed["User time (seconds)"]) + float(timed["System time (seconds)"])
    print(f"exit {proc.returncode}; wall {seconds:.1f} s; CPU {cpu:.1f} s; peak RSS {rss / 1024:.0f} MiB")
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    for run in sorted(work.glob("workflow-run-*")):
        for path in sorted(p for p in run.rglob("*") if p.is_file()):
            print(f"  {path.stat().st_size / 1e6:10.2f} MB  {path.relative_to(run)}")
    for path in sorted(root.joinpath("in").glob("big_*")):
        print(f"  {path.stat().st_size / 1e6:10.2f} MB  in/{path.name}")


if __name__ == "__main__":
    main()
