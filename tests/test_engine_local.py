"""The local engine's long-lived in-process workers: crash isolation, wall-time limit, size guard, ordering.

Real parts only: folder buckets, real rasters, the real converter in real worker processes, real signals.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cog_pipeline.engines.local_pool import plan_order, plan_workers, threads_for
from cog_pipeline.examples import write_raster
from cog_pipeline.pipeline import ScanOptions, scan
from cog_pipeline.run.rundir import list_run_dirs
from cog_pipeline.storage.store import StoreConfig
from tests.conftest import config_with


def _buckets(tmp_path: Path) -> Path:
    root = tmp_path / "buckets"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir(parents=True)
    return root


def _options(root: Path, tmp_path: Path, **kw) -> ScanOptions:
    kw.setdefault("workers", 2)
    return ScanOptions("in", "out", StoreConfig(local_root=root), tmp_path / "work", progress=False, config=config_with(retries=0, **kw))


def _records(tmp_path: Path) -> dict[str, dict]:
    (run,) = list_run_dirs(tmp_path / "work")
    return {rec.key: rec for rec in run.job_records().values()}


def _results(root: Path, kind: str) -> list[str]:
    rows: list[str] = []
    for path in sorted((root / "in").glob(f"*_{kind}-*.csv")):
        if not path.name.endswith("-reasons.csv"):
            rows += path.read_text().splitlines()
    return rows


def _scan_one_image(sub: Path, key: str, bands: int, size: int, manifest_bands: int | None = None) -> Path:
    """A fresh pair of folder buckets under ``sub`` with one image and its manifest, scanned with one worker."""
    root = _buckets(sub)
    write_raster(root / "in" / key, bands, size=size)
    (root / "in" / "m_raw.csv").write_text(f"{key},{manifest_bands or bands}\n")
    scan(_options(root, sub, workers=1), echo=lambda line: None)
    return root


def sparse_tiff(path: Path, size: int, bands: int = 1) -> Path:
    """A huge tiled GeoTIFF with no tile written: a few MB on disk, size x size pixels to GDAL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", tiled=True,
                   blockxsize=512, blockysize=512, sparse_ok=True)
    with rasterio.open(path, "w", **profile):
        pass
    return path


def _kill_when_running(work: Path, job_id: str, sig: int, found: dict) -> None:
    """Send `sig` to the worker that logs it started `job_id` (polls the job's log for its pid)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for log in work.glob(f"workflow-run-*/jobs/{job_id}.log"):
            text = log.read_text(errors="replace")
            if "worker pid " in text:
                pid = int(text.split("worker pid ")[1].split(",")[0])
                os.kill(pid, sig)
                found["pid"] = pid
                return
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_that_dies_fails_only_its_image(tmp_path, sig):
    root = _buckets(tmp_path)
    # The victim is the biggest, so it starts first, and it takes long enough to be killed mid-conversion.
    write_raster(root / "in" / "victim.tif", 3, size=3000)
    for i in range(3):
        write_raster(root / "in" / f"small{i}.tif", 1, size=48)
    rows = ["victim.tif,3", *(f"small{i}.tif,1" for i in range(3))]
    (root / "in" / "m_raw.csv").write_text("\n".join(rows) + "\n")
    found: dict = {}
    killer = threading.Thread(target=_kill_when_running, args=(tmp_path / "work", "ID0000001", sig, found))
    killer.start()
    report = scan(_options(root, tmp_path), echo=lambda line: None)
    killer.join()
    assert found, "the victim's worker was never seen"
    assert len(report.reconciled) == 1 and not report.errors
    assert sorted(_results(root, "processed")) == sorted(rows[1:])
    assert _results(root, "failed") == ["victim.tif,3"]
    record = _records(tmp_path)["victim.tif"]
    assert record.category == "WORKER_DIED" and signal.Signals(sig).name in record.reason
    reasons = next((root / "in").glob("*-reasons.csv")).read_text()
    assert "WORKER_DIED" in reasons and signal.Signals(sig).name in reasons


@pytest.mark.slow
def test_a_job_over_the_wall_time_limit_is_killed_and_the_others_go_on(tmp_path):
    root = _buckets(tmp_path)
    sparse_tiff(root / "in" / "slow.tif", 30000)  # minutes of work: the size guard is off for this test
    write_raster(root / "in" / "small.tif", 1, size=48)
    (root / "in" / "m_raw.csv").write_text("slow.tif,1\nsmall.tif,1\n")
    started = time.monotonic()
    scan(_options(root, tmp_path, job_timeout_s=3, max_pixels=0), echo=lambda line: None)
    assert time.monotonic() - started < 90
    assert _results(root, "processed") == ["small.tif,1"]
    assert _results(root, "failed") == ["slow.tif,1"]
    record = _records(tmp_path)["slow.tif"]
    assert record.category == "TIMEOUT" and "3 s" in record.reason and "--job-timeout" in record.reason
    assert record.attempts == 1


def test_a_huge_sparse_image_fails_fast_naming_its_size_and_the_setting(tmp_path):
    root = _buckets(tmp_path)
    huge = sparse_tiff(root / "in" / "huge.tif", 100000)
    assert huge.stat().st_size < 3_000_000
    write_raster(root / "in" / "small.tif", 1, size=32)
    (root / "in" / "m_raw.csv").write_text("huge.tif,1\nsmall.tif,1\n")
    started = time.monotonic()
    scan(_options(root, tmp_path), echo=lambda line: None)
    assert time.monotonic() - started < 60
    assert _results(root, "failed") == ["huge.tif,1"] and _results(root, "processed") == ["small.tif,1"]
    record = _records(tmp_path)["huge.tif"]
    assert record.category == "TOO_LARGE"
    assert "100000x100000x1" in record.reason and "--max-pixels" in record.reason
    assert "COG_PIPELINE_MAX_PIXELS" in record.reason
    assert not (root / "out" / "huge.tif").exists()


def test_max_pixels_is_configurable(tmp_path):
    root = _buckets(tmp_path)
    write_raster(root / "in" / "a.tif", 1, size=64)  # 4096 pixel-bytes
    (root / "in" / "m_raw.csv").write_text("a.tif,1\n")
    scan(_options(root, tmp_path, max_pixels=4000, workers=1), echo=lambda line: None)
    assert _results(root, "failed") == ["a.tif,1"]
    assert "over the limit of 4,000" in _records(tmp_path)["a.tif"].reason


def test_in_process_outputs_match_the_executable(tmp_path, monkeypatch):
    """Same bytes of pixels, same band-mismatch warning, same record, with and without the subprocess."""
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("COG_PIPELINE_LOCAL_INPROCESS", mode)
        sub = tmp_path / mode
        root = _scan_one_image(sub, "x y#1.tif", 3, 96, manifest_bands=4)
        assert _results(root, "processed") == ["x y#1.tif,4"]
        record = _records(sub)["x y#1.tif"]
        assert record.status == "succeeded" and "BAND_MISMATCH" in (record.warning or "")
        assert set(record.outputs) == {"x y#1.tif", "x y#1.jpg"}
        assert record.outputs["x y#1.tif"]["size"] == (root / "out" / "x y#1.tif").stat().st_size
        with rasterio.open(root / "out" / "x y#1.tif") as cog:
            outs[mode] = (cog.read(), cog.overviews(1))
        log = next((sub / "work").glob("workflow-run-*/jobs/*.log")).read_text()
        assert "worker pid" in log
    assert np.array_equal(outs["1"][0], outs["0"][0]) and outs["1"][1] == outs["0"][1]


def test_big_images_start_first(tmp_path):
    """One worker: completion order is start order, which must be biggest input first, and the last job,
    alone, gets every core's thread."""
    root = _buckets(tmp_path)
    for name, size in (("small", 32), ("big", 160), ("medium", 96)):
        write_raster(root / "in" / f"{name}.tif", 1, size=size)
    (root / "in" / "m_raw.csv").write_text("small.tif,1\nbig.tif,1\nmedium.tif,1\n")
    scan(_options(root, tmp_path, workers=1), echo=lambda line: None)
    (run,) = list_run_dirs(tmp_path / "work")
    finished = sorted(run.jobs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    keys = [run.job_records()[p.stem].key for p in finished]
    assert keys == ["big.tif", "medium.tif", "small.tif"]


# ---------------------------------------------------------------------------------------------------------------
# Scheduling as pure functions


class _Job:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


def test_plan_order_is_biggest_first_and_stable():
    jobs = [_Job(f"ID{i}") for i in range(5)]
    sizes = {"ID0": 10, "ID1": 500, "ID2": 10, "ID3": 90}
    assert [j.job_id for j in plan_order(jobs, sizes)] == ["ID1", "ID3", "ID0", "ID2", "ID4"]


def test_threads_and_workers_fit_the_cores():
    assert plan_workers(2, 24) == 2 and plan_workers(8, 3) == 3 and plan_workers(2, 10, requested=5) == 5
    assert threads_for(2, running=0, waiting=23) == 1  # many small images: N workers x 1 thread
    assert threads_for(2, running=1, waiting=0) == 1  # the other core is busy
    assert threads_for(2, running=0, waiting=0) == 2  # one huge image alone: every core
    assert threads_for(8, running=1, waiting=0) == 4
    assert threads_for(1, running=0, waiting=0) == 1


@pytest.mark.slow
def test_a_small_manifest_does_not_wait_behind_a_huge_image_of_another(tmp_path):
    """Two manifests claimed in one tick share one pool: with one worker the order is the scheduler's alone,
    and the small manifest's jobs finish before the other's big image (the old tick ran them in turn)."""
    root = _buckets(tmp_path)
    write_raster(root / "in" / "big.tif", 3, size=600)
    (root / "in" / "a_raw.csv").write_text("big.tif,3\n")  # claimed first
    for i in range(2):
        write_raster(root / "in" / f"tiny{i}.tif", 1, size=24)
    (root / "in" / "b_raw.csv").write_text("tiny0.tif,1\ntiny1.tif,1\n")
    report = scan(_options(root, tmp_path, workers=1), echo=lambda line: None)
    assert len(report.reconciled) == 2 and not report.errors
    finished = []
    for run in list_run_dirs(tmp_path / "work"):
        finished += [(p.stat().st_mtime_ns, run.load().manifest_key) for p in run.jobs_dir.glob("*.json")]
    assert [key for _, key in sorted(finished)] == ["b_raw.csv", "b_raw.csv", "a_raw.csv"]
    assert sorted(_results(root, "processed")) == ["big.tif,3", "tiny0.tif,1", "tiny1.tif,1"]
    assert not _results(root, "failed")


def test_fair_queue_serves_the_run_with_fewest_running_then_least_left():
    from cog_pipeline.engines.local_pool import FairQueue

    class Spec:
        def __init__(self, run: str, job_id: str) -> None:
            self.scratch_root, self.job_id = run, job_id

    a = [Spec("A", "ID1"), Spec("A", "ID2")]
    b = [Spec("B", "ID1")]
    q = FairQueue([*a, *b], {("A", "ID1"): 1000, ("A", "ID2"): 900, ("B", "ID1"): 10})
    first, _ = q.pop({})
    assert (first.scratch_root, first.job_id) == ("B", "ID1")  # least input left
    second, _ = q.pop({"B": 1})
    assert (second.scratch_root, second.job_id) == ("A", "ID1")
    q.retry(second, 2)
    again, attempt = q.pop({})
    assert again is second and attempt == 2 and len(q) == 1


def test_in_process_jobs_record_the_uploaded_outputs_etag_and_size(buckets, tmp_path):
    """Folder bucket and moto's HTTP S3 server: the record names exactly the objects the job uploaded."""
    image = tmp_path / "img.tif"
    write_raster(image, 3, size=64)
    buckets.put_file("d/a b#1.tif", image)
    buckets.put_text("m_raw.csv", "d/a b#1.tif,3\n")
    report = scan(ScanOptions(buckets.input_bucket, buckets.output_bucket, buckets.config, tmp_path / "work", progress=False, config=config_with(workers=1)), echo=lambda line: None)
    assert len(report.reconciled) == 1
    (run,) = list_run_dirs(tmp_path / "work")
    (record,) = run.job_records().values()
    assert record.status == "succeeded" and record.attempts == 1
    for key in ("d/a b#1.tif", "d/a b#1.jpg"):
        head = buckets.output.head(key)
        assert head is not None and record.outputs[key] == {"etag": head.etag, "size": head.size}


def test_a_worker_is_replaced_after_its_share_of_jobs(tmp_path, monkeypatch):
    import cog_pipeline.engines.local_pool as pool

    monkeypatch.setattr(pool, "JOBS_PER_WORKER", 2)
    root = _buckets(tmp_path)
    for i in range(3):
        write_raster(root / "in" / f"t{i}.tif", 1, size=16 + i)
    (root / "in" / "m_raw.csv").write_text("t0.tif,1\nt1.tif,1\nt2.tif,1\n")
    scan(_options(root, tmp_path, workers=1), echo=lambda line: None)
    assert len(_results(root, "processed")) == 3
    logs = [p.read_text() for p in (tmp_path / "work").glob("workflow-run-*/jobs/*.log")]
    pids = {log.split("worker pid ")[1].split(",")[0] for log in logs}
    assert len(pids) == 2


def test_the_scan_prestarts_its_workers_and_the_jobs_run_on_them(tmp_path, monkeypatch):
    """The pool's workers start before the claim (their imports overlap it) and are the ones that convert."""
    import cog_pipeline.engines.local_pool as pool

    started: list[int] = []
    real_prestart = pool.prestart

    def spy(count: int) -> None:
        real_prestart(count)
        started.extend(w.proc.pid for w in pool._prestarted)

    monkeypatch.setattr(pool, "prestart", spy)
    root = _scan_one_image(tmp_path, "a.tif", 1, 16)
    assert _results(root, "processed") == ["a.tif,1"]
    log = next((tmp_path / "work").glob("workflow-run-*/jobs/*.log")).read_text()
    assert started and f"worker pid {started[0]}," in log
    assert pool._prestarted == []  # released: nothing left running after the scan
    assert not any(os.path.exists(f"/proc/{pid}") and "cog-worker" in _comm(pid) for pid in started)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_prestarted_workers_are_released_when_nothing_is_claimed(tmp_path):
    import cog_pipeline.engines.local_pool as pool

    root = _buckets(tmp_path)
    report = scan(_options(root, tmp_path, workers=1), echo=lambda line: None)
    assert report.claimed == [] and pool._prestarted == []


def test_the_engines_own_end_hook_runs_in_this_process(tmp_path, monkeypatch):
    """`cog-pipeline finish RUN_DIR` is a call of pipeline.finish, not a process: a second interpreter would cost
    ~0.5 s a scan.
    With COG_PIPELINE_LOCAL_INPROCESS=0 it is a /bin/sh command again, as DAGMan runs it."""
    import subprocess

    import cog_pipeline.engines.base as base

    spawned: list[list[str]] = []
    real_run = subprocess.run

    def record(cmd, *a, **kw):
        spawned.append(list(cmd))
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(subprocess, "run", record)
    for mode in ("1", "0"):
        monkeypatch.setenv("COG_PIPELINE_LOCAL_INPROCESS", mode)
        sub = tmp_path / mode
        spawned.clear()
        root = _scan_one_image(sub, "a.tif", 1, 16)
        assert _results(root, "processed") == ["a.tif,1"]
        (run,) = list_run_dirs(sub / "work")
        hook = base.end_hook_command(run.path)
        assert (["/bin/sh", "-c", hook] in spawned) is (mode == "0")


def test_a_foreign_end_hook_still_runs_in_a_shell(tmp_path):
    from cog_pipeline.engines.local import run_end_hook
    from cog_pipeline.run.rundir import RunDir

    marker = tmp_path / "ran"
    called = []
    assert run_end_hook(f"touch '{marker}'; exit 3", RunDir(tmp_path), finish=called.append) == 3
    assert marker.exists() and not called  # not the engines' own hook: never a call of finish


def test_a_stopped_worker_exits_cleanly_after_its_start_up():
    """Told to stop, a worker leaves with status 0 (no interpreter shutdown to wait for) and its pipe closes."""
    import cog_pipeline.engines.local_pool as pool

    pool.prestart(1)
    worker = pool._prestarted[0]
    pool.release_prestarted()
    assert pool._prestarted == [] and worker.proc.exitcode == 0


def test_a_freed_worker_gets_its_next_job_before_the_ended_job_is_handed_on(tmp_path, monkeypatch):
    """on_final (the driver writes the job's record there, with an fsync) comes after the worker that ran the
    job has been sent the next one: one worker, two jobs, in that order."""
    import cog_pipeline.engines.local_pool as pool
    from cog_pipeline.engines.local_worker import JobSpec

    root = _buckets(tmp_path)
    exe = tmp_path / "touch_out.sh"
    exe.write_text("#!/bin/sh\necho done > out.txt\n")
    exe.chmod(0o755)
    specs = [JobSpec(job_id, str(exe), [], "in", "out", {}, {"out.txt": f"{job_id}.txt"}, 1, {},
                     StoreConfig(local_root=root).to_json(), str(tmp_path / "scratch"), str(tmp_path / "jobs" / f"{job_id}.log"))
             for job_id in ("ID0000001", "ID0000002")]
    events: list[str] = []
    real_threads_for = pool.threads_for

    def dispatching(*args):  # called once per job sent to a worker
        events.append("sent")
        return real_threads_for(*args)

    monkeypatch.setattr(pool, "threads_for", dispatching)
    pool.execute(specs, pool.PoolSettings(workers=1, cores=1), lambda spec, outcome, *_: events.append(f"{spec.job_id} {outcome.status}"))
    assert events == ["sent", "sent", "ID0000001 succeeded", "ID0000002 succeeded"]


def test_a_worker_does_not_run_the_parents_main_script_again(tmp_path):
    """Spawned from a script (as from the cog-pipeline console script), a worker must not re-run that script
    as __mp_main__: under the console script that imported the whole CLI in every worker. The script marks
    each run; the worker's clean exit (status 0) shows it started, without the second mark."""
    import subprocess
    import sys

    runs = tmp_path / "runs.txt"
    script = tmp_path / "main_script.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(runs)!r}, 'a').write(__name__ + '\\n')\n"
        "if __name__ == '__main__':\n"
        "    import cog_pipeline.engines.local_pool as pool\n"
        "    pool.prestart(1)\n"
        "    worker = pool._prestarted[0]\n"
        "    pool.release_prestarted()\n"
        "    sys.exit(worker.proc.exitcode)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert runs.read_text().split() == ["__main__"]


def test_the_progress_bar_counts_jobs_and_failures_and_stays_away_without_a_terminal(capsys):
    from cog_pipeline.engines.local import _progress_bar

    with _progress_bar(True, "converting (1 workers)", 2) as advance:
        advance("1.00", 0)
        advance("2.00", 1)
    assert "2/2" in capsys.readouterr().out
    with _progress_bar(False, "converting", 1) as advance:  # no terminal: nothing printed, rich not needed
        advance("1.00", 0)
    assert capsys.readouterr().out == ""


def test_a_worker_unpickling_its_job_imports_no_engine_layers() -> None:
    """A pool worker unpickles one JobSpec per job; the class's module must not bring the engine's workflow
    reader (YAML), run directory or state layers into every worker (~3 MiB each, issue 10)."""
    import pickle
    import subprocess
    import sys

    from cog_pipeline.engines.local import JobSpec

    spec = JobSpec("ID0000001", "generate_cog", ["a"], "in", "out", {"input/a.tif": "a.tif"}, {"a.tif": "a.tif"},
                   3, {}, {"local_root": "/tmp"}, "/tmp/scratch", "/tmp/jobs/ID0000001.log")
    code = ("import pickle, sys\n"
            "spec = pickle.loads(sys.stdin.buffer.read())\n"
            "print(spec.job_id, *sorted(m for m in sys.modules if m in ('yaml', 'cog_pipeline.engines.local', "
            "'cog_pipeline.run.rundir', 'cog_pipeline.run.state')))\n")
    proc = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(spec), capture_output=True, timeout=60)
    assert proc.stdout.decode().split() == ["ID0000001"], proc.stderr.decode()


def test_a_uniform_preview_is_converted_and_flagged_in_the_record_and_the_report(tmp_path):
    """One flat value everywhere: the row is processed, its record carries the converter's PREVIEW_UNIFORM
    warning line, and the report flags it (an operator cannot tell such a picture from an empty conversion)."""
    root = _buckets(tmp_path)
    with rasterio.open(root / "in" / "flat.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 64, 64), 77, dtype=np.uint8))
    write_raster(root / "in" / "fine.tif", 1, size=64)
    (root / "in" / "m_raw.csv").write_text("flat.tif,1\nfine.tif,1\n")
    scan(_options(root, tmp_path, workers=1), echo=lambda line: None)
    assert sorted(_results(root, "processed")) == ["fine.tif,1", "flat.tif,1"]
    records = _records(tmp_path)
    assert records["flat.tif"].warning.startswith("WARNING PREVIEW_UNIFORM: every sample of the JPEG preview is 77")
    assert records["fine.tif"].warning is None
    (run,) = list_run_dirs(tmp_path / "work")
    page = (run.path / "report.html").read_text(encoding="utf-8")
    assert 'flat.tif <span class="flag uniform-preview"' in page and 'fine.tif <span class="flag' not in page
