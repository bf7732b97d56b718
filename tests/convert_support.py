"""Shared by the converter's tests: the zipapp built from the current sources, and the stock-container stand-in.

Every test that runs ``generate_cog`` as a process runs this fresh build (not the committed file),
so it tests the modules as they are."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cog_pipeline.transformations.build import build_zipapp

SYSTEM_PYTHON = "/usr/bin/python3"

_BUILD_DIR = Path(tempfile.mkdtemp(prefix="generate_cog-test-"))
atexit.register(shutil.rmtree, _BUILD_DIR, True)
EXECUTABLE = build_zipapp(_BUILD_DIR)


def _system_python_has_osgeo() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "from osgeo import gdal; import numpy"], capture_output=True)
    return probe.returncode == 0


needs_osgeo = pytest.mark.skipif(
    not _system_python_has_osgeo(),
    reason="/usr/bin/python3 has no osgeo.gdal + numpy (the stock GDAL container stand-in): "
    "apt-get install -y python3-gdal python3-numpy gdal-bin",
)
