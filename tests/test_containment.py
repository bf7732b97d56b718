"""Issue 22.2: the tool never deletes, follows or overwrites anything outside what it created or was given.

Real folders, real symbolic links, real rasters, the real command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cog_pipeline.run.claim import ClaimError
from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.storage.store import StoreConfig, StoreError, open_store
from tests.conftest import config_with


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cog_pipeline", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _folders(tmp_path: Path) -> Path:
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    return root


def _scan(root: Path, tmp_path: Path, **kw) -> object:
    options = ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", progress=False, **kw, config=config_with(workers=1))
    return scan(options, echo=lambda _m: None)


def _results(root: Path, kind: str) -> str:
    return "".join(p.read_text() for p in sorted((root / "in").glob(f"*_{kind}-*.csv")) if not p.name.endswith("-reasons.csv"))


def test_demo_refuses_a_folder_it_did_not_create_and_deletes_nothing(tmp_path):
    """`demo --dir .` used to delete the given folder and everything in it."""
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    result = _cli("demo", "--dir", ".", "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "was not created by `cog-pipeline demo`" in result.stderr
    assert precious.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


@pytest.mark.slow
def test_demo_runs_again_in_its_own_folder_and_keeps_what_else_is_there(tmp_path):
    demo = tmp_path / "demo"
    assert _cli("demo", "--dir", str(demo), "--size", "64", "--quiet").returncode == 0
    (demo / "notes.txt").write_text("mine")
    again = _cli("demo", "--dir", str(demo), "--size", "64", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (demo / "notes.txt").read_text() == "mine"
    assert len(list((demo / "work").glob("workflow-run-*"))) == 1  # the first demo's run went with its work/


def test_a_symlinked_input_is_not_read(tmp_path):
    """in/leak.tif -> a file outside the buckets: the row fails, nothing of the private file is published."""
    root = _folders(tmp_path)
    private = tmp_path / "elsewhere" / "private.tif"
    private.parent.mkdir()
    write_raster(private, bands=1, size=64)
    (root / "in" / "leak.tif").symlink_to(private)
    (root / "in" / "x_raw.csv").write_text("leak.tif,1\n")
    _scan(root, tmp_path)
    assert _results(root, "failed") == "leak.tif,1\n" and _results(root, "processed") == ""
    assert list((root / "out").rglob("*.tif")) == []
    with pytest.raises(StoreError, match="symbolic link"):
        open_store("in", StoreConfig(local_root=root)).read_bytes("leak.tif")


def test_outputs_never_land_through_a_symlinked_folder(tmp_path):
    """out/evil -> a folder outside the buckets: the row fails and that folder stays empty."""
    root = _folders(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "out" / "evil").symlink_to(outside)
    write_raster(root / "in" / "evil" / "x.tif", bands=1, size=64)
    write_raster(root / "in" / "good.tif", bands=1, size=64)
    (root / "in" / "x_raw.csv").write_text("evil/x.tif,1\ngood.tif,1\n")
    _scan(root, tmp_path)
    assert list(outside.iterdir()) == []
    assert _results(root, "failed") == "evil/x.tif,1\n" and _results(root, "processed") == "good.tif,1\n"


def test_an_output_bucket_that_is_a_link_to_the_input_bucket_is_refused(tmp_path):
    """`out -> in` used to pass the same-bucket refusal (names differ), so each COG replaced its source."""
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").symlink_to(root / "in")
    write_raster(root / "in" / "a.tif", bands=1, size=64)
    source = (root / "in" / "a.tif").read_bytes()
    (root / "in" / "x_raw.csv").write_text("a.tif,1\n")
    result = _cli("scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-w", str(tmp_path / "w"))
    assert result.returncode == 2 and "one folder" in result.stderr, result.stderr
    assert (root / "in" / "a.tif").read_bytes() == source and (root / "in" / "x_raw.csv").exists()


def test_a_work_dir_inside_a_folder_bucket_is_refused(tmp_path):
    """With `-p '*.csv'` such a work dir used to claim its own manifest copy every tick, forever."""
    root = _folders(tmp_path)
    (root / "in" / "x_raw.csv").write_text("a.tif,1\n")
    options = ScanOptions("in", "out", StoreConfig(local_root=root), root / "in" / "work", pattern="*.csv", progress=False)
    with pytest.raises(ClaimError, match="inside folder bucket 'in'"):
        scan(options, echo=lambda _m: None)
    assert sorted(p.name for p in (root / "in").iterdir()) == ["x_raw.csv"]
    result = _cli("scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-p", "*.csv",
                  "-w", str(root / "out" / "w"))
    assert result.returncode == 1 and "inside folder bucket 'out'" in result.stderr, result.stderr
    assert (root / "in" / "x_raw.csv").exists() and not (root / "out" / "w").exists()


def test_a_listing_never_shows_files_behind_a_symlinked_folder(tmp_path):
    root = _folders(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.tif").write_bytes(b"x")
    (root / "in" / "evil").symlink_to(outside)
    (root / "in" / "real").mkdir()
    (root / "in" / "real" / "a.tif").write_bytes(b"a")
    store = open_store("in", StoreConfig(local_root=root))
    assert [o.key for o in store.list("")] == ["real/a.tif"]
    assert [o.key for o in store.list("evil/")] == [] and [o.key for o in store.list("evil/p")] == []
    with pytest.raises(StoreError, match="symbolic link"):
        store.head("evil/private.tif")
