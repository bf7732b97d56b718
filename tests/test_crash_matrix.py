"""The crash matrix (issue 8, "Done when"): kill a real `cog-pipeline scan` at every store call and run-state
write of one tick, rescan, and check that nothing was lost, doubled or misplaced.

A first, clean tick counts the points (tests/crash_hook/sitecustomize.py wraps every LocalStore/S3Store call
and every rundir.write_json_atomic, across the scan, its pool worker and its END hook). Then, for point N, a
fresh bucket is scanned by a process SIGKILLed (its whole process group) right before the N-th point, a normal
scan follows, and the result must be: every manifest row in exactly one result file, each processed row's COG
at its own key (odd keys: a space, a literal %20, a '#') with the source's pixels, no processing file or claim
marker left, the run reconciled. Points are sampled evenly when there are more than COG_CRASH_POINTS (folder)
or COG_CRASH_POINTS_S3 (moto) so the module stays within ~3 minutes; set them higher for a full sweep.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cog_pipeline.examples import write_raster
from cog_pipeline.run.rundir import RECONCILED, list_run_dirs
from cog_pipeline.storage.store import StoreConfig, open_store

pytestmark = pytest.mark.slow

HOOK_DIR = Path(__file__).resolve().parent / "crash_hook"
# Sizes differ so an image at another row's key is caught by its pixels, not only by its name.
IMAGES = {"X/a b.tif": 20, "X/a%20b.tif": 28, "Weird/hash#tag.tif": 24}
ROWS = [*(f"{k},1" for k in IMAGES), "missing.tif,1"]
MANIFEST = "m_raw.csv"


def _budget(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _sample(total: int, budget: int) -> list[int]:
    """Points 1..total, or `budget` of them spread evenly (always the first and the last)."""
    if total <= budget:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (budget - 1)) for i in range(budget)})


class Site:
    """One input/output bucket pair on a backend, freshly filled for each crash point."""

    def __init__(self, tmp: Path, config: StoreConfig, input_bucket: str, output_bucket: str, sources: Path) -> None:
        self.tmp, self.config, self.sources = tmp, config, sources
        self.input = open_store(input_bucket, config)
        self.output = open_store(output_bucket, config)

    def fill(self) -> None:
        for key in IMAGES:
            self.input.upload(self.sources / key, key)
        self.input.put_bytes(MANIFEST, ("\n".join(ROWS) + "\n").encode())

    def args(self, work: Path) -> list[str]:
        if self.config.local_root is not None:
            where = ["--local-root", str(self.config.local_root)]
        else:
            where = ["-e", str(self.config.endpoint)]
        return [sys.executable, "-m", "cog_pipeline", "scan", *where, "--input-bucket", self.input.bucket, "--output-bucket", self.output.bucket,
                "-w", str(work), "--workers", "1", "--quiet"]


def _sources(tmp: Path) -> Path:
    root = tmp / "sources"
    for i, (key, size) in enumerate(IMAGES.items()):
        write_raster(root / key, 1, size=size, seed=i)
    return root


def _scan(site: Site, work: Path, crash_at: int | None = None, log: Path | None = None, after: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_CRASH")}
    if crash_at is not None:
        counter = work.parent / f"{work.name}.counter"
        counter.unlink(missing_ok=True)
        env.update(COG_CRASH_COUNTER=str(counter), PYTHONPATH=os.pathsep.join(
            [str(HOOK_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]))
        env["COG_CRASH_AFTER" if after else "COG_CRASH_AT"] = str(crash_at)
        if log is not None:
            env["COG_CRASH_LOG"] = str(log)
    return subprocess.run(site.args(work), env=env, capture_output=True, text=True, timeout=120, start_new_session=True)


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _check(site: Site, work: Path, where: str) -> None:
    keys = [o.key for o in site.input.list("")]
    assert not [k for k in keys if "processing-" in k or k.endswith(".claim") or k == MANIFEST], (where, keys)
    processed = [k for k in keys if "_processed-" in k]
    failed = [k for k in keys if "_failed-" in k and not k.endswith("-reasons.csv")]
    assert len(processed) == 1 and len(failed) == 1, (where, keys)
    rows = Counter(line for key in processed + failed for line in site.input.read_bytes(key)[0].decode().splitlines())
    assert rows == Counter(ROWS), (where, rows)  # every row in exactly one result file, once
    done = site.input.read_bytes(processed[0])[0].decode().splitlines()
    assert done == [f"{k},1" for k in IMAGES], (where, done)
    for key in IMAGES:
        local = site.tmp / "got" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        site.output.download(key, local)
        assert np.array_equal(_pixels(local), _pixels(site.sources / key)), (where, key)
        assert site.output.head(key[: -len(".tif")] + ".jpg") is not None, (where, key)
    states = [r.load().state for r in list_run_dirs(work)]
    assert states.count(RECONCILED) == 1 and all(s in (RECONCILED, "abandoned") for s in states), (where, states)


# The writes of the claim and of reconcile (and the run-state writes around them): every one is in CI, killed
# before it and, for the store's writes, right after it was applied (its answer lost).
STORE_WRITES = ("create", "put_bytes", "replace", "delete")
STATE_WRITES = ("write:run.json", "write:reconcile.json")


def _write_points(labels: list[str]) -> list[int]:
    """Points (1-based) of every store write but a job's outputs (`adopt`) and every run.json/reconcile.json write."""
    return [i for i, label in enumerate(labels, start=1)
            if label.rpartition(".")[2] in STORE_WRITES or label in STATE_WRITES]


def _matrix(site: Site, reset, budget: int) -> tuple[int, list[tuple[int, bool]]]:
    """Count the points of a clean tick, then crash at each write point (before it, and after each store write)
    and at `budget` more points spread evenly, rescanning after each."""
    work = site.tmp / "count-work"
    log = site.tmp / "points.log"
    reset()
    site.fill()
    clean = _scan(site, work, crash_at=0, log=log)
    assert clean.returncode == 0, clean.stderr
    _check(site, work, "clean run")
    labels = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
    total = len(labels)
    assert total > 20  # claim, generate, run and reconcile each make several
    writes = _write_points(labels)
    cases = sorted({*((n, False) for n in [*writes, *_sample(total, budget)]),
                    *((n, True) for n in writes if labels[n - 1] not in STATE_WRITES)})
    for n, after in cases:
        reset()
        site.fill()
        work = site.tmp / f"work-{n}{'-after' if after else ''}"
        crashed = _scan(site, work, crash_at=n, after=after)
        where = f"killed {'after' if after else 'at'} point {n} of {total} ({labels[n - 1]})"
        assert crashed.returncode == -9, (where, crashed.returncode, crashed.stderr[-2000:])  # it was killed
        again = _scan(site, work)
        assert again.returncode == 0, (where, again.stdout, again.stderr)
        assert "Traceback" not in again.stderr, (where, again.stderr)
        _check(site, work, where)
    return total, cases


def test_crash_at_every_sampled_point_on_folder_buckets(tmp_path):
    import shutil

    root = tmp_path / "buckets"
    site = Site(tmp_path, StoreConfig(local_root=root), "in", "out", _sources(tmp_path))

    def reset() -> None:
        shutil.rmtree(root, ignore_errors=True)
        (root / "in").mkdir(parents=True)
        (root / "out").mkdir()

    total, cases = _matrix(site, reset, _budget("COG_CRASH_POINTS", 8))
    print(f"folder crash matrix: {len(cases)} kills at {len({n for n, _ in cases})} of {total} points")


def test_crash_at_sampled_points_on_s3(s3_server, bucket_name, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    names = iter(range(1, 10_000))
    site_ref: dict[str, Site] = {}
    sources = _sources(tmp_path)

    def reset() -> None:
        n = next(names)
        ins, outs = f"{bucket_name}-{n}-in", f"{bucket_name}-{n}-out"
        client.create_bucket(Bucket=ins)
        client.create_bucket(Bucket=outs)
        fresh = Site(tmp_path, StoreConfig(endpoint=s3_server), ins, outs, sources)
        site_ref["site"].__dict__.update(fresh.__dict__)

    site_ref["site"] = Site(tmp_path, StoreConfig(endpoint=s3_server), f"{bucket_name}-0-in", f"{bucket_name}-0-out", sources)
    total, cases = _matrix(site_ref["site"], reset, _budget("COG_CRASH_POINTS_S3", 3))
    print(f"s3 crash matrix: {len(cases)} kills at {len({n for n, _ in cases})} of {total} points")
