"""Benchmark: generate the Pegasus files for manifests of 1,000 / 10,000 / 100,000 rows.

Each size runs in a fresh subprocess (so peak memory is that size's alone): it creates a folder-backed input
bucket with one empty object per row plus a run directory (setup, not timed), then times
``workflow_gen.generate()`` -- pre-flight listing, preflight.json, replicas.yml, transformations.yml,
sites.yml, pegasus.properties, workflow.yml and run.json -- and reports the process's peak RSS.
With ``--api-reference`` it also times plain Pegasus.api (objects + ``write()``) for sizes up to 10,000, to
show why the fast writer exists. Prints a table; never asserts timings.

    .venv/bin/python benchmarks/bench_workflow_gen.py [--sizes 1000 10000 100000] [--api-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 20.0
TARGET_BYTES = 1 << 30


def _key(i: int) -> str:
    return f"Counties/C{i % 72:02d}/Tiles {i // 1000:03d}/ortho_{i:06d}.tif"


def child(size: int, api_reference: bool) -> dict:
    from cog_pipeline.storage.listing import find_keys
    from cog_pipeline.run.manifest import parse_manifest
    from cog_pipeline.pegasus import workflow_gen as wg
    from cog_pipeline.run.rundir import CLAIMED, RunDir, RunInfo
    from cog_pipeline.storage.store import StoreConfig, open_store

    with tempfile.TemporaryDirectory(prefix="bench-wfgen-") as tmp:
        root = Path(tmp) / "buckets"
        (root / "out").mkdir(parents=True)
        lines = []
        for i in range(size):
            key = _key(i)
            path = root / "in" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            lines.append(f"{key},{1 + i % 4}")
        lines.append("Counties/C00/missing.tif,1")  # one pre-flight failure
        config = StoreConfig(local_root=root)
        run = RunDir(Path(tmp) / "workflow-run-20240101-000000")
        run.path.mkdir()
        run.file(RunDir.MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
        run.save(RunInfo("20240101-000000", "in", "out", "m_raw.csv", "m_processing-20240101-000000.csv", config.to_json(), CLAIMED))
        store = open_store("in", config)

        t0 = time.perf_counter()
        manifest = parse_manifest(run.file(RunDir.MANIFEST).read_bytes())
        found = find_keys(store, (r.key for r in manifest.rows))
        listing = time.perf_counter() - t0
        assert len(found) == size

        t0 = time.perf_counter()
        result = wg.generate(run, store, wg.WorkflowSettings())
        total = time.perf_counter() - t0
        assert result.jobs == size and len(result.failed) == 1
        sizes = {name: path.stat().st_size for name, path in result.files.items()}
        out = {
            "rows": size,
            "generate_s": total,
            "listing_s": listing,  # the same pre-flight listing, timed on its own before generate()
            "workflow_mb": sizes["workflow.yml"] / 1e6,
            "replicas_mb": sizes["replicas.yml"] / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if api_reference and size <= 10_000:
            t0 = time.perf_counter()
            wf = wg.build_api_workflow(manifest.rows, wg.WorkflowSettings(), "cog-ref", "true", {})
            wf.write(str(Path(tmp) / "api-workflow.yml"))
            out["pegasus_api_workflow_s"] = time.perf_counter() - t0
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--api-reference", action="store_true", help="also time plain Pegasus.api for sizes <= 10,000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.api_reference)))
        return 0

    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size)] + (["--api-reference"] if args.api_reference else [])
        wall0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        data["child_wall_s"] = time.perf_counter() - wall0
        # ru_maxrss of waited-for children: the largest child so far (sizes run in increasing order).
        data["children_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows.append(data)

    print(f"{'rows':>8} | {'generate s':>10} | {'listing alone s':>18} | {'peak RSS MiB':>12} | {'workflow.yml MB':>15} | {'replicas.yml MB':>15} | {'Pegasus.api wf s':>16}")
    print("-" * 112)
    for r in rows:
        api = f"{r['pegasus_api_workflow_s']:.2f}" if "pegasus_api_workflow_s" in r else "-"
        print(
            f"{r['rows']:>8,} | {r['generate_s']:>10.2f} | {r['listing_s']:>18.2f} | {r['peak_rss_mb']:>12.0f} |"
            f" {r['workflow_mb']:>15.1f} | {r['replicas_mb']:>15.1f} | {api:>16}"
        )
    biggest = max(rows, key=lambda r: r["rows"])
    print(
        f"\ntarget for {biggest['rows']:,} rows: < {TARGET_SECONDS:.0f} s and < 1 GiB -> "
        f"{biggest['generate_s']:.1f} s, {biggest['peak_rss_mb']:.0f} MiB peak RSS (whole process, setup included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
