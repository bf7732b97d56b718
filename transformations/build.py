"""Build the converter's modules into one self-contained executable file (a zipapp), on demand.

Workflow jobs stage one file to the worker and run it in the stock GDAL container (the system Python, GDAL's own
bindings, numpy; no pip). The modules of this package import each other only relatively, so inside the archive
they run as the package ``generate_cog`` unchanged. The file is built, never committed: reproducibly (sorted
entries, fixed timestamps: the same bytes for the same sources), into a cache keyed by the sources' hash.

    python -m cog_pipeline.transformations.build [DEST_DIR]   # prints the path of DEST_DIR/generate_cog
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
#: The executable's name, and the package name the modules carry inside the archive.
NAME = "generate_cog"
_MAIN = (
    '"""generate_cog: convert one GeoTIFF into a verified COG and a JPEG preview (see --help)."""\n'
    "import sys\n\n"
    f"from {NAME}.cli import main\n\n"
    "sys.exit(main())\n"
)


def converter_modules() -> list[Path]:
    """The package's module files that make up the converter (all but this builder), sorted."""
    return sorted(p for p in HERE.glob("*.py") if p.name != "build.py")


def sources_hash() -> str:
    """sha256 of the converter's modules (names and bytes) and of the archive's entry point."""
    digest = hashlib.sha256(_MAIN.encode())
    for module in converter_modules():
        digest.update(module.name.encode() + b"\0" + module.read_bytes() + b"\0")
    return digest.hexdigest()


def _bytecode(module: Path) -> bytes:
    """The module compiled as an unchecked hash-based .pyc (no timestamp: reproducible). zipimport never writes
    bytecode, so without it every process compiles every module again (~50 ms); an interpreter of another
    version ignores it (magic number) and compiles the source beside it."""
    import importlib.util
    from importlib._bootstrap_external import _code_to_hash_pyc

    source = module.read_bytes()
    code = compile(source, f"{NAME}/{module.name}", "exec", dont_inherit=True)
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))


def build_zipapp(dest_dir: Path) -> Path:
    """Write the executable zipapp ``dest_dir/generate_cog`` (mode 0755, shebang ``/usr/bin/env python3``);
    returns its path. Written beside it and renamed into place, so a running job never sees half a file."""
    dest = Path(dest_dir) / NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{NAME}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"#!/usr/bin/env python3\n")
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
                entries = [("__main__.py", _MAIN.encode())]
                for m in converter_modules():
                    entries += [(f"{NAME}/{m.name}", m.read_bytes()), (f"{NAME}/{m.name}c", _bytecode(m))]
                for name, data in entries:
                    info = zipfile.ZipInfo(name, date_time=(1980, 1, 2, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, data)
        os.chmod(partial, 0o755)
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return dest


def cached_zipapp(root: Optional[Path] = None) -> Path:
    """The zipapp of the current sources, built on first use under ``root`` (default
    ``$XDG_CACHE_HOME/cog-pipeline``, ``~/.cache/cog-pipeline``) in a folder named by the sources' hash, so an
    edited module gets a new build and a path of its own."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(root or Path(cache) / "cog-pipeline") / f"generate_cog-{sources_hash()[:16]}"
    path = folder / NAME
    if not path.is_file():
        build_zipapp(folder)
    return path


if __name__ == "__main__":
    print(build_zipapp(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()))
