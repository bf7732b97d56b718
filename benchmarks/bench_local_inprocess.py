"""CPU-s per image of `cog-pipeline scan --engine local`: in-process workers vs one executable per image.

Run by hand (never by the tests):  .venv/bin/python benchmarks/bench_local_inprocess.py [N] [SIZE ...]
One CPU (taskset -c 0, one GDAL thread, one worker), as an HTCondor slot; the CPU time is the whole scan's
(claim, generate, workers or converter processes, reconcile), divided by N. COG_PIPELINE_LOCAL_INPROCESS=0
is the old path (a generate_cog process per image).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.rasters import textured, write  # noqa: E402


def run(root: Path, n: int, size: int, inprocess: bool) -> tuple[float, float]:
    buckets = root / "buckets"
    shutil.rmtree(root / "work", ignore_errors=True)
    shutil.rmtree(buckets / "out", ignore_errors=True)
    (buckets / "out").mkdir(parents=True)
    for p in (buckets / "in").glob("*.csv"):
        p.unlink()
    (buckets / "in" / "m_raw.csv").write_text("".join(f"img{i}.tif,4\n" for i in range(n)))
    env = {**os.environ, "COG_PIPELINE_THREADS": "1", "GDAL_NUM_THREADS": "1",
           "COG_PIPELINE_LOCAL_INPROCESS": "1" if inprocess else "0"}
    exe = str(Path(sys.executable).with_name("cog-pipeline"))
    cmd = ["taskset", "-c", "0", exe, "scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root",
           str(buckets), "-w", str(root / "work"), "--workers", "1", "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert len(list((buckets / "out").glob("*.tif"))) == n
    return cpu / n, wall / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    sizes = [int(s) for s in sys.argv[2:]] or [1000, 2500]
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data = textured(4, size, size)
            for i in range(n):
                write(root / "buckets" / "in" / f"img{i}.tif", data)
            for inprocess in (False, True, False, True):
                cpu, wall = run(root, n, size, inprocess)
                mode = "in-process" if inprocess else "subprocess"
                print(f"{size}² 4-band x{n}  {mode:10s}  {cpu:.2f} CPU-s/image  {wall:.2f} s/image wall", flush=True)


if __name__ == "__main__":
    main()
