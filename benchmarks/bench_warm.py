"""A clustered job's images, warm converter vs one cold process per image (transformations/warm.py).

Stands in for one HTCondor slot running a Pegasus cluster: N ``generate_cog`` invocations one after
another in one working directory, under ``taskset -c 0`` with ``GDAL_NUM_THREADS=1``, by the stock
container's Python (``/usr/bin/python3`` with Debian's osgeo GDAL). Wall time is the whole loop; CPU is
the whole process tree: the shell's ``wait4`` (clients, cold converters) plus the detached warm server with
its handlers and converters, which this process adopts as a subreaper and reaps after its idle timeout.

    .venv/bin/python benchmarks/bench_warm.py [--count 8] [--size 1000] [--bands 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_inputs import images, input_set  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXECUTABLE = REPO / "transformations" / "generate_cog"


def one_loop(inputs: list[Path], bands: int, warm: bool, python: str) -> tuple[float, float]:
    """(wall s, CPU s) of converting ``inputs`` one after another in a fresh job directory."""
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COG_PIPELINE_", "_CONDOR_"))}
        env.update(GDAL_NUM_THREADS="1", COG_PIPELINE_WARM="1" if warm else "0", COG_PIPELINE_WARM_IDLE="1")
        script = "".join(f'{python} {EXECUTABLE} {src} out{i}.tif out{i}.jpg --bands {bands} || exit 1\n'
                         for i, src in enumerate(inputs))
        start = time.monotonic()
        proc = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", script], cwd=tmp, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        if status:
            raise SystemExit(f"conversion loop failed: status {status}")
        return wall, usage.ru_utime + usage.ru_stime + _orphans_cpu()


def _become_subreaper() -> None:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER): the detached warm server then exits as our
    child, and its CPU, its handlers' and its converters' come back with wait4 like everyone else's."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")


def _orphans_cpu() -> float:
    """CPU of the adopted descendants, waiting until they exit (the warm server: its idle timeout)."""
    total = 0.0
    while True:
        try:
            _, _, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return total
        total += usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--python", default="/usr/bin/python3")
    a = p.parse_args()
    inputs = [path for _, path in images(input_set(a.count, a.size, a.bands))]
    _become_subreaper()
    results: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for _ in range(a.repeat):  # alternate, so load from other work hits both alike
        for mode in ("cold", "warm"):
            results[mode].append(one_loop(inputs, a.bands, mode == "warm", a.python))
    med = {m: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for m, r in results.items()}
    print(f"{a.count} x {a.size}x{a.size} {a.bands}-band, one CPU, {a.python}, median of {a.repeat}")
    print("| mode | wall s | CPU s | wall per image | CPU per image |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, (wall, cpu) in med.items():
        print(f"| {mode} | {wall:.2f} | {cpu:.2f} | {wall / a.count:.3f} | {cpu / a.count:.3f} |")
    (cw, cc), (ww, wc) = med["cold"], med["warm"]
    print(f"warm vs cold: wall {cw / ww:.2f}x faster, CPU {cc / wc:.2f}x less")
    print("all runs (wall, CPU):", json.dumps({m: [[round(w, 2), round(c, 2)] for w, c in r] for m, r in results.items()}))


if __name__ == "__main__":
    main()
