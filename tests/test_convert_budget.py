"""The memory budget: where it comes from (HTCondor's job ad) and what it bounds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cog_pipeline.transformations.budget import condor_memory_mb, memory_budget_mb
from cog_pipeline.transformations.convert import convert, inspect_input
from cog_pipeline.transformations.jpeg import write_preview
from cog_pipeline.transformations.preview import plan_preview, preview_vrt
from tests import rasters
from tests.convert_support import EXECUTABLE, SYSTEM_PYTHON, needs_osgeo


def _job_ad(tmp_path: Path, text: str) -> Path:
    ad = tmp_path / ".job.ad"
    ad.write_text(text)
    return ad


def test_budget_is_the_slots_request_memory(tmp_path: Path, monkeypatch) -> None:
    ad = _job_ad(tmp_path, 'Cmd = "/bin/generate_cog"\nRequestCpus = 1\nRequestMemory = 2048\nMemoryProvisioned = 4096\n')
    monkeypatch.setenv("_CONDOR_JOB_AD", str(ad))
    monkeypatch.delenv("COG_PIPELINE_MEMORY_BUDGET", raising=False)
    assert memory_budget_mb() == 2048
    monkeypatch.setenv("COG_PIPELINE_MEMORY_BUDGET", "700")
    assert memory_budget_mb() == 700
    assert memory_budget_mb(300) == 300


def test_budget_defaults_to_1_gb_outside_a_slot_or_for_an_expression(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("COG_PIPELINE_MEMORY_BUDGET", raising=False)
    monkeypatch.delenv("_CONDOR_JOB_AD", raising=False)
    assert memory_budget_mb() == 1024
    ad = _job_ad(tmp_path, "RequestMemory = ifthenelse(MemoryUsage =?= undefined, 1024, MemoryUsage * 2)\n")
    assert condor_memory_mb(str(ad)) is None
    monkeypatch.setenv("_CONDOR_JOB_AD", str(tmp_path / "missing.ad"))
    assert memory_budget_mb() == 1024


def test_budget_caps_the_block_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    monkeypatch.setenv("_CONDOR_JOB_AD", str(_job_ad(tmp_path, "RequestMemory = 256\n")))
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 600, 600))
    result = convert(src, tmp_path / "o.tif", tmp_path / "o.jpg", 3)
    assert (result.memory_budget_mb, result.cachemax_mb) == (256, 32)
    assert convert(src, tmp_path / "p.tif", tmp_path / "p.jpg", 3).cachemax_mb == 32
    assert convert(src, tmp_path / "q.tif", tmp_path / "q.jpg", 3, memory_budget_mb=4096).cachemax_mb == 512
    # GDAL's own option passes through untouched (GDAL reads it once per process)
    proc = subprocess.run([sys.executable, str(EXECUTABLE), str(src), str(tmp_path / "r.tif"),
                           str(tmp_path / "r.jpg"), "-v"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GDAL_CACHEMAX": "100"})
    assert proc.returncode == 0 and "budget 256 MB, cache 100 MB" in proc.stdout, proc.stdout + proc.stderr


_PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); " \
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


@pytest.mark.slow
def test_executable_stays_under_a_small_budget(tmp_path: Path) -> None:
    """Peak RSS of the converter alone (a tiny parent, so the fork adds nothing) under --memory-budget 300."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 3000, 3000), photometric="RGB")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_PIPELINE_")}
    proc = subprocess.run([sys.executable, "-S", "-c", _PEAK, sys.executable, str(EXECUTABLE), str(src),
                           str(tmp_path / "o.tif"), str(tmp_path / "o.jpg"), "--memory-budget", "300"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak_mib = int(proc.stdout.split()[-1]) / 1024
    assert peak_mib < 300, peak_mib


@pytest.mark.parametrize("count,height,width", [(3, 300, 410), (1, 700, 910), (4, 257, 1030)])
def test_preview_over_the_budget_is_written_in_strips_with_the_drivers_pixels(
        tmp_path: Path, count: int, height: int, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview whose coefficient buffer exceeds a third of the budget is joined from baseline strips:
    a valid JPEG (restart markers between strips, odd sizes with a partial last strip and MCU
    padding) that decodes to exactly the pixels GDAL's JPEG driver writes (with the same libjpeg:
    the strips are GDAL's, so the reference is GDAL's driver, not Pillow)."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(count, height, width),
                        **({"photometric": "RGB"} if count >= 3 else {}))
    strips = convert(src, tmp_path / "s.tif", tmp_path / "s.jpg", count, memory_budget_mb=1)
    assert strips.jpeg_method == "strips"
    info = inspect_input(str(src))
    plan = plan_preview(info)
    (tmp_path / "p.vrt").write_text(preview_vrt(info, plan))
    assert write_preview(str(tmp_path / "p.vrt"), str(tmp_path / "d.jpg"), "", plan.band_count, 80, "driver") == "driver"
    assert not strips.warnings
    with rasters.open_(tmp_path / "s.jpg") as ds:
        assert (ds.driver, ds.count, ds.width, ds.height) == ("JPEG", min(count, 3), width, height)
    assert np.array_equal(rasters.read(tmp_path / "s.jpg"), rasters.read(tmp_path / "d.jpg"))
    data = (tmp_path / "s.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" and b"\xff\xdd" in data  # SOI, EOI, DRI
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no strip temp left


@needs_osgeo
def test_osgeo_preview_strips_decode_to_the_drivers_pixels(tmp_path: Path) -> None:
    """The same on the stock-container stand-in (system GDAL 3.6, libtiff + libjpeg-turbo)."""
    src = rasters.write(tmp_path / "in.tif", rasters.textured(3, 300, 410), photometric="RGB")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COG_PIPELINE_")}
    outs = {}
    for name, budget in (("d", "1024"), ("s", "1")):  # the CLI refuses < 64 MB; the environment does not
        proc = subprocess.run([SYSTEM_PYTHON, str(EXECUTABLE), str(src), str(tmp_path / f"{name}.tif"),
                               str(tmp_path / f"{name}.jpg"), "-v"], capture_output=True, text=True,
                              env={**env, "COG_PIPELINE_MEMORY_BUDGET": budget}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs[name] = proc.stdout
    assert "osgeo GDAL" in outs["s"] and "jpeg strips" in outs["s"] and "jpeg driver" in outs["d"]
    assert np.array_equal(rasters.read(tmp_path / "s.jpg"), rasters.read(tmp_path / "d.jpg"))
