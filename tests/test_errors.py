"""Bad input and broken surroundings end in one clear line and a known exit code, never a traceback, and
lose nothing (issue 8.4, 8.11, 8.13). Real folders, real files and devices, real subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli.main import main as cli


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("pattern", ["*", "*raw*", "*.c?v", ""])
def test_a_pattern_that_could_match_images_is_refused_before_listing(tmp_path, pattern):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "img000.tif").write_bytes(b"II*\x00" + bytes(60))
    result = CliRunner().invoke(cli, ["scan", "--local-root", str(tmp_path), "--input-bucket", "in", "--output-bucket", "out", "-p", pattern, "-w", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "pattern" in _one_line(result.output)
    assert (tmp_path / "in" / "img000.tif").is_file() and not (tmp_path / "w").exists()


def test_secret_key_file_that_is_a_device_is_named_as_one(tmp_path):
    access = tmp_path / "access"
    access.write_text("AKIA\n")
    result = CliRunner().invoke(cli, ["scan", "-e", "http://127.0.0.1:9", "--input-bucket", "in", "--output-bucket", "out", "-a", str(access), "-s", "/dev/urandom", "-w", str(tmp_path / "w")])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "/dev/urandom" in line and "device" in line and "no such file" not in line


def test_a_key_file_that_is_a_folder_is_named_as_one(tmp_path):
    access = tmp_path / "access"
    access.write_text("AKIA\n")
    result = CliRunner().invoke(cli, ["scan", "-e", "http://127.0.0.1:9", "--input-bucket", "in", "--output-bucket", "out", "-a", str(access), "-s", str(tmp_path), "-w", str(tmp_path / "w")])
    assert result.exit_code == 2 and "folder" in _one_line(result.output)


# ------------------------------------------------------------------ broken surroundings: read-only, full, damaged


def _bucket(root: Path, rows: str = "a.tif,1\n") -> Path:
    from cog_pipeline.examples import write_raster

    write_raster(root / "in" / "a.tif", 1, size=16)
    (root / "in" / "m_raw.csv").write_text(rows)
    (root / "out").mkdir(parents=True, exist_ok=True)
    return root


def _scan(root: Path, work: Path):
    return CliRunner().invoke(cli, ["scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-w", str(work), "--quiet"])


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def _processed(root: Path) -> list[str]:
    return [p.read_text() for p in (root / "in").glob("m_processed-*.csv")]


class Mounts:
    """Real mounts (read-only binds, a tiny tmpfs), undone after the test. Needs root."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def _run(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    def read_only(self, path: Path) -> None:
        self._run("--bind", str(path), str(path))
        self.points.append(path)
        self._run("-o", "remount,ro,bind", str(path))

    def tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._run("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        self.points.append(path)

    def undo(self, path: Path) -> None:
        subprocess.run(["umount", str(path)], check=True, capture_output=True)
        self.points.remove(path)


@pytest.fixture()
def mounts():
    if os.geteuid() != 0:
        pytest.skip("needs root for real read-only and tmpfs mounts")
    probe = Mounts()
    yield probe
    for path in reversed(probe.points):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.slow
def test_read_only_input_folder_is_one_line_and_the_manifest_waits(tmp_path, mounts):
    root = _bucket(tmp_path / "b")
    mounts.read_only(root / "in")
    result = _scan(root, tmp_path / "w")
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert "Read-only file system" in line
    mounts.undo(root / "in")
    assert (root / "in" / "m_raw.csv").is_file()
    again = _scan(root, tmp_path / "w")
    assert again.exit_code == 0, again.output
    assert _processed(root) == ["a.tif,1\n"]


@pytest.mark.slow
def test_read_only_work_dir_is_one_line_and_nothing_is_claimed(tmp_path, mounts):
    root = _bucket(tmp_path / "b")
    work = tmp_path / "w"
    work.mkdir()
    mounts.read_only(work)
    result = _scan(root, work)
    assert result.exit_code == 1 and len(_error_lines(result.output)) == 1, result.output
    assert (root / "in" / "m_raw.csv").is_file() and not list((root / "in").glob("*processing-*"))
    mounts.undo(work)
    assert _scan(root, work).exit_code == 0 and _processed(root) == ["a.tif,1\n"]


@pytest.mark.slow
def test_run_dir_made_read_only_mid_run_is_one_line_and_the_next_tick_finishes(tmp_path, mounts):
    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.storage.store import StoreConfig, open_store

    root = _bucket(tmp_path / "b")
    store = open_store("in", StoreConfig(local_root=root))
    claim = claim_one(store, store.head("m_raw.csv"), work_dir=tmp_path / "w", output_bucket="out", store_config=StoreConfig(local_root=root))
    mounts.read_only(claim.run_dir.path)  # the tick that carries it on finds its run directory read-only
    (root / "in" / "n_raw.csv").write_text("missing.tif,1\n")
    result = _scan(root, tmp_path / "w")
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert claim.run_dir.path.name in line and "Read-only file system" in line
    assert list((root / "in").glob("n_failed-*[0-9].csv"))  # the other manifest of the tick went on
    assert [p.name for p in (root / "in").glob("*processing-*")] == [claim.names.processing_key]
    mounts.undo(claim.run_dir.path)
    again = _scan(root, tmp_path / "w")
    assert again.exit_code == 0, again.output
    assert _processed(root) == ["a.tif,1\n"]


@pytest.mark.slow
def test_full_input_disk_is_one_line_and_the_run_finishes_once_there_is_room(tmp_path, mounts):
    """A 512 KiB tmpfs as the input bucket, filled to the last byte before the scan."""
    root = tmp_path / "b"
    mounts.tmpfs(root / "in", "512k")
    _bucket(root)
    filler = root / "in" / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    result = _scan(root, tmp_path / "w")
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert "No space left on device" in line
    filler.unlink()
    again = _scan(root, tmp_path / "w")
    assert again.exit_code == 0, again.output
    assert _processed(root) == ["a.tif,1\n"] and not list((root / "in").glob("*processing-*"))


def _claimed(tmp_path: Path, rows: str = "missing.tif,1\n"):
    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.storage.store import StoreConfig, open_store

    root = _bucket(tmp_path / "b", rows)
    store = open_store("in", StoreConfig(local_root=root))
    claim = claim_one(store, store.head("m_raw.csv"), work_dir=tmp_path / "w", output_bucket="out", store_config=StoreConfig(local_root=root))
    return root, claim


def test_corrupt_reconcile_json_is_recomputed(tmp_path):
    root, claim = _claimed(tmp_path)
    claim.run_dir.file("reconcile.json").write_text('{"result": {"processed": ')
    result = CliRunner().invoke(cli, ["reconcile", str(claim.run_dir.path)])
    assert result.exit_code == 0, result.output
    assert [p.read_text() for p in (root / "in").glob("m_failed-*[0-9].csv")] == ["missing.tif,1\n"]
    assert claim.run_dir.load().state == "reconciled"


def test_store_null_in_run_json_is_reported_once_and_skipped(tmp_path):
    import json

    root, claim = _claimed(tmp_path)
    data = json.loads(claim.run_dir.file("run.json").read_text())
    data["store"] = None
    claim.run_dir.file("run.json").write_text(json.dumps(data))
    (root / "in" / "n_raw.csv").write_text("missing.tif,1\n")
    result = _scan(root, tmp_path / "w")
    assert result.exit_code == 0, result.output
    mentions = [line for line in result.output.splitlines() if re.search(re.escape(claim.run_dir.path.name) + r"(?!-)", line)]
    assert len(mentions) == 1 and "store" in mentions[0] and mentions[0].startswith("warning:")
    assert [p.name for p in (root / "in").glob("n_failed-*[0-9].csv")]  # the other manifest went on
    single = CliRunner().invoke(cli, ["reconcile", str(claim.run_dir.path)])
    assert single.exit_code == 1 and len(_error_lines(single.output)) == 1 and "store" in single.output


def test_corrupt_workflow_yml_is_one_line_and_the_run_stays(tmp_path):
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.storage.store import StoreConfig, open_store

    root, claim = _claimed(tmp_path, "a.tif,1\n")
    generate(claim.run_dir, open_store("in", StoreConfig(local_root=root)), WorkflowSettings(write_credentials=False))
    claim.run_dir.file("workflow.yml").write_text("jobs: [ {id: \n  - : :\n")
    result = CliRunner().invoke(cli, ["run", str(claim.run_dir.path)])
    assert result.exit_code == 1 and len(_error_lines(result.output)) == 1, result.output
    tick = _scan(root, tmp_path / "w")
    assert tick.exit_code == 1
    (line,) = _error_lines(tick.output)
    assert claim.run_dir.path.name in line and "left for the next tick" in line
    assert claim.run_dir.load().state == "generated"
    assert [p.name for p in (root / "in").glob("*processing-*")] == [claim.names.processing_key]


@pytest.mark.slow
def test_corrupt_job_record_reruns_that_job(tmp_path):
    from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
    from cog_pipeline.storage.store import StoreConfig, open_store

    root, claim = _claimed(tmp_path, "a.tif,1\n")
    generate(claim.run_dir, open_store("in", StoreConfig(local_root=root)), WorkflowSettings(write_credentials=False))
    claim.run_dir.jobs_dir.mkdir(exist_ok=True)
    (claim.run_dir.jobs_dir / "ID0000001.json").write_text('{"job_id": "ID0000001", "status": "succ')
    result = _scan(root, tmp_path / "w")
    assert result.exit_code == 0, result.output
    assert _processed(root) == ["a.tif,1\n"]


def test_a_damaged_far_future_run_dir_is_reported_once_and_skipped(tmp_path):
    root = _bucket(tmp_path / "b", "missing.tif,1\n")
    work = tmp_path / "w"
    odd = work / "workflow-run-99991231-235959"
    odd.mkdir(parents=True)
    (odd / "run.json").write_bytes(b"\xff\xfe not json")
    (odd / "notes.txt").write_text("left by hand\n")
    result = _scan(root, work)
    assert result.exit_code == 0, result.output
    assert result.output.count("workflow-run-99991231-235959") == 1
    assert [p.name for p in (root / "in").glob("m_failed-*[0-9].csv")] and odd.is_dir()
