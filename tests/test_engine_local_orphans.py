"""Issue 8.9: `kill -9` of a real `cog-pipeline scan` leaves no worker behind, and a rerun never converts a job
while another process still does (the run's lease)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cog_pipeline.examples import write_raster
from cog_pipeline.run.rundir import RECONCILED, list_run_dirs

MARKER = "COG_PIPELINE_TEST_MARKER"


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries the marker (workers inherit the scan's environment)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _scan_cmd(root: Path, work: Path) -> list[str]:
    exe = str(Path(sys.executable).with_name("cog-pipeline"))
    return [exe, "scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(root), "-w", str(work),
            "--workers", "2", "--retries", "0", "--quiet"]


def _status_states(work: Path) -> list[str]:
    """The state column of `cog-pipeline status --json`, as an operator reads it."""
    import json

    exe = str(Path(sys.executable).with_name("cog-pipeline"))
    done = subprocess.run([exe, "status", "-w", str(work), "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [row["state"] for row in json.loads(done.stdout)["runs"]]


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux")
def test_kill_9_of_a_scan_leaves_no_worker_and_the_rerun_finishes_once(tmp_path):
    root = tmp_path / "buckets"
    (root / "out").mkdir(parents=True)
    rows = []
    for i in range(8):
        write_raster(root / "in" / f"img{i}.tif", 3, size=1500)
        rows.append(f"img{i}.tif,3")
    (root / "in" / "m_raw.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker}
    scan_a = subprocess.Popen(_scan_cmd(root, work), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        converting = lambda: any("--- attempt" in p.read_text(errors="replace") for p in work.glob("workflow-run-*/jobs/*.log"))  # noqa: E731
        assert _wait_for(converting, 120), "scan A never started converting"
        workers = [pid for pid in marked_processes(marker) if pid != scan_a.pid]
        assert workers, "no worker process seen"

        # While A lives, a second scan does not carry A's run on (its lease is alive).
        scan_b = subprocess.run(_scan_cmd(root, work), env=env, capture_output=True, text=True, timeout=120)
        assert scan_b.returncode == 0, scan_b.stdout + scan_b.stderr
        assert "nothing to do" in scan_b.stdout and "carrying on" not in scan_b.stdout
        assert _status_states(work) == ["running"]  # its owner lives

        scan_a.send_signal(signal.SIGKILL)
        scan_a.wait(10)
    finally:
        if scan_a.poll() is None:
            scan_a.kill()
            scan_a.wait()
    assert _wait_for(lambda: not marked_processes(marker), 15), f"workers survived their scan: {marked_processes(marker)}"
    (run,) = list_run_dirs(work)
    assert run.load().state != RECONCILED
    before = set(run.job_records())
    assert len(before) < len(rows), "scan A finished before it was killed: use bigger images"
    assert _status_states(work) == ["stopped"]  # run.json still says running; its lease says its owner is gone

    scan_c = subprocess.run(_scan_cmd(root, work), env=env, capture_output=True, text=True, timeout=600)
    assert scan_c.returncode == 0 and "Traceback" not in scan_c.stdout + scan_c.stderr, scan_c.stdout + scan_c.stderr
    assert "carrying on" in scan_c.stdout
    assert run.load().state == RECONCILED
    processed = next((root / "in").glob("m_processed-*.csv")).read_text().splitlines()
    assert sorted(processed) == sorted(rows)
    assert not marked_processes(marker)
