"""Issue 22.5: a full work-dir disk leaves rows for a later tick (one error line, exit 1), never failed for good.

The work dir is a real 4 MiB tmpfs (needs root, as the CI container runs; skipped elsewhere), the image real
noise that no codec shrinks, the scan the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _scan(root: Path, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cog_pipeline", "scan", "--local-root", str(root), "--input-bucket", "in",
         "--output-bucket", "out", "-w", str(work), "--workers", "1", "--retries", "0", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )


def test_a_full_work_dir_disk_leaves_the_rows_for_a_later_tick(tmp_path, small_disk):
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    noise = np.random.default_rng(7).integers(0, 256, size=(3, 1400, 1400), dtype=np.uint8)  # ~5.9 MB, incompressible
    with rasterio.open(root / "in" / "big.tif", "w", driver="GTiff", width=1400, height=1400, count=3, dtype="uint8") as ds:
        ds.write(noise)
    (root / "in" / "x_raw.csv").write_text("big.tif,3\n")
    work = small_disk / "work"

    full = _scan(root, work)
    assert full.returncode == 1, full.stdout + full.stderr
    errors = [line for line in full.stderr.splitlines() + full.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ran out of disk" in errors[0] and "left for" in errors[0], full.stdout + full.stderr
    assert not list((root / "in").glob("x_failed-*")) and not list((root / "in").glob("x_processed-*"))
    assert len(list((root / "in").glob("x_processing-*.csv"))) == 1  # the manifest is kept, claimed, for later

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # the operator frees disk
    later = _scan(root, work)
    assert later.returncode == 0, later.stdout + later.stderr
    (processed,) = (root / "in").glob("x_processed-*.csv")
    assert processed.read_text() == "big.tif,3\n" and not list((root / "in").glob("x_failed-*"))
