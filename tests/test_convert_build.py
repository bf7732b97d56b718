"""build_zipapp: the converter's modules as one self-contained executable zipapp, built reproducibly on
demand (never committed) and cached by the sources' hash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from cog_pipeline.pegasus import workflow_gen
from cog_pipeline.transformations import build
from cog_pipeline.transformations.build import build_zipapp, cached_zipapp
from tests import rasters
from tests.convert_support import SYSTEM_PYTHON, needs_osgeo


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_build_writes_an_executable_zipapp_with_the_shebang(tmp_path: Path) -> None:
    out = build_zipapp(tmp_path / "deep")
    assert out == tmp_path / "deep" / "generate_cog"
    assert os.access(out, os.X_OK)
    assert out.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = set(_entries(out))
    assert {"__main__.py", "generate_cog/__init__.py", "generate_cog/cli.py", "generate_cog/convert.py"} <= names
    assert "generate_cog/build.py" not in names
    assert "generate_cog/cli.pyc" in names  # zipimport never writes bytecode: it ships compiled
    assert not [n for n in names if "__pycache__" in n]
    assert sorted(tmp_path.joinpath("deep").iterdir()) == [out]  # no temporary left beside it


def test_build_is_reproducible(tmp_path: Path) -> None:
    first = build_zipapp(tmp_path / "a").read_bytes()
    assert build_zipapp(tmp_path / "b").read_bytes() == first


def test_the_cache_builds_once_per_source_hash_and_the_engines_use_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = cached_zipapp()
    assert path.name == "generate_cog" and path.parent.name == f"generate_cog-{build.sources_hash()[:16]}"
    assert path.parent.parent == tmp_path / "cache" / "cog-pipeline"
    mtime = path.stat().st_mtime_ns
    assert cached_zipapp() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    assert workflow_gen.default_converter() == path
    from cog_pipeline.engines.local_worker import bundled_converter, runs_in_process

    assert bundled_converter() == path and runs_in_process(str(path))
    path.unlink()
    assert cached_zipapp().is_file()  # a removed build is built again


@needs_osgeo
def test_built_file_alone_runs_under_the_system_python_without_rasterio(tmp_path: Path) -> None:
    """Copied on its own into an empty folder and run through its shebang with only /usr/bin on PATH,
    as a worker in the stock GDAL container would: osgeo backend, the built-in COG check."""
    alone = tmp_path / "worker"
    alone.mkdir()
    exe = shutil.copy2(build_zipapp(tmp_path / "build"), alone / "generate_cog")
    data = rasters.textured(3, 600, 700)
    src = rasters.write(tmp_path / "in.tif", data, photometric="RGB")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(exe), str(src), "x.tif", "x.jpg", "--bands", "3", "-v", "--metadata", "RUN=r 1"],
                          cwd=alone, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ", valid; " in proc.stdout and "osgeo GDAL" in proc.stdout
    np.testing.assert_array_equal(rasters.read(alone / "x.tif"), data)
    tags = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; from osgeo import gdal; "
                           "print(gdal.Open(sys.argv[1]).GetMetadata('COG_PIPELINE'))", "x.tif"],
                          cwd=alone, env=env, capture_output=True, text=True)
    assert "'RUN': 'r 1'" in tags.stdout and "'PROFILE_COMPRESS': 'LZW'" in tags.stdout
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import importlib.util as u; print(u.find_spec('rasterio'))"],
                           env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "None"


def test_built_file_runs_in_the_venv_too(tmp_path: Path) -> None:
    exe = build_zipapp(tmp_path)
    src = rasters.write(tmp_path / "in.tif", rasters.textured(1, 64, 64))
    proc = subprocess.run([sys.executable, str(exe), str(src), tmp_path / "o.tif", tmp_path / "o.jpg", "-v"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rasterio GDAL" in proc.stdout
