"""Build the converter's modules into one self-contained executable file (a zipapp).

Workflow jobs stage one file to the worker and run it in the stock GDAL container (the system
Python, GDAL's own bindings, numpy; no pip). The modules of this package import each other
only relatively, so inside the archive they run as the package ``generate_cog`` unchanged.
The build is reproducible (sorted entries, fixed timestamps): ``transformations/generate_cog``
is this build, committed, and a test checks that it matches the sources.

    python -m cog_pipeline.transformations.build [DEST]   # default: transformations/generate_cog
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The executable the repository ships (and workflow_gen names as the transformation's PFN).
EXECUTABLE = HERE / "generate_cog"
#: The package name the modules carry inside the archive.
ARCHIVE_PACKAGE = "generate_cog"
INTERPRETER = "/usr/bin/env python3"
#: Not part of the converter: this builder.
_LEFT_OUT = {"build.py"}
_MAIN = (
    '"""generate_cog: convert one GeoTIFF into a verified COG and a JPEG preview (see --help)."""\n'
    "import sys\n\n"
    "# warm.main: served by this job's warm converter when one is live (warm.py), else cli.main here.\n"
    f"from {ARCHIVE_PACKAGE}.warm import main\n\n"
    "sys.exit(main())\n"
)
_EPOCH = 315532800 + 86400  # 1980-01-02: zip timestamps start in 1980


def converter_modules() -> list[Path]:
    """The package's module files that make up the converter, sorted."""
    return sorted(p for p in HERE.glob("*.py") if p.name not in _LEFT_OUT)


def build_executable(dest: Path) -> Path:
    """Write the executable zipapp to ``dest`` (mode 0755, shebang ``/usr/bin/env python3``); returns ``dest``.

    Written beside ``dest`` and renamed into place, so a running job never sees half a file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="generate_cog-build-") as tmp:
        root = Path(tmp) / "app"
        package = root / ARCHIVE_PACKAGE
        package.mkdir(parents=True)
        for module in converter_modules():
            shutil.copyfile(module, package / module.name)
        (root / "__main__.py").write_text(_MAIN, encoding="utf-8")
        for path in [root, package, *root.rglob("*")]:
            os.utime(path, (_EPOCH, _EPOCH))
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            zipapp.create_archive(root, partial, interpreter=INTERPRETER, compressed=True)
            partial.chmod(0o755)
            os.replace(partial, dest)
        finally:
            if partial.exists():
                partial.unlink()
    return dest


if __name__ == "__main__":
    print(build_executable(Path(sys.argv[1]) if len(sys.argv) > 1 else EXECUTABLE))
