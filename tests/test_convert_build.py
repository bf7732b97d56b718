"""build_executable: the converter's modules as one self-contained executable zipapp."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np

from cog_pipeline.transformations.build import EXECUTABLE as COMMITTED, build_executable
from tests import rasters
from tests.convert_support import SYSTEM_PYTHON, needs_osgeo


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_build_writes_an_executable_zipapp_with_the_shebang(tmp_path: Path) -> None:
    out = build_executable(tmp_path / "deep" / "generate_cog")
    assert out == tmp_path / "deep" / "generate_cog"
    assert os.access(out, os.X_OK)
    assert out.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = set(_entries(out))
    assert {"__main__.py", "generate_cog/__init__.py", "generate_cog/cli.py", "generate_cog/convert.py"} <= names
    assert "generate_cog/build.py" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert sorted(tmp_path.joinpath("deep").iterdir()) == [out]  # no temporary left beside it


def test_committed_executable_is_the_build_of_the_current_sources(tmp_path: Path) -> None:
    """transformations/generate_cog is what workflows stage; rebuild it with
    `python -m cog_pipeline.transformations.build` after changing a module."""
    assert _entries(COMMITTED) == _entries(build_executable(tmp_path / "fresh"))
    assert os.access(COMMITTED, os.X_OK)


@needs_osgeo
def test_built_file_alone_runs_under_the_system_python_without_rasterio(tmp_path: Path) -> None:
    """Copied on its own into an empty folder and run through its shebang with only /usr/bin on PATH,
    as a worker in the stock GDAL container would: osgeo backend, GDAL's own COG validator."""
    alone = tmp_path / "worker"
    alone.mkdir()
    exe = shutil.copy2(build_executable(tmp_path / "build" / "generate_cog"), alone / "generate_cog")
    data = rasters.textured(3, 600, 700)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(exe), str(src), "x.tif", "x.jpg", "--bands", "3", "-v"], cwd=alone, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "valid (gdal+builtin)" in proc.stdout and "osgeo GDAL" in proc.stdout
    np.testing.assert_array_equal(rasters.read(alone / "x.tif"), data)
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import importlib.util as u; print(u.find_spec('rasterio'))"],
                           env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "None"


def test_built_file_runs_in_the_venv_too(tmp_path: Path) -> None:
    import sys

    exe = build_executable(tmp_path / "generate_cog")
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 64, 64))
    proc = subprocess.run([sys.executable, str(exe), str(src), tmp_path / "o.tif", tmp_path / "o.jpg", "-v"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "libgdal GDAL" in proc.stdout  # rasterio's libgdal, called through the C API
