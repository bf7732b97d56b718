"""The run record and its state machine, the lease, damaged run directories and the shared exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.run import lease
from cog_pipeline.cli.main import main as cli
from cog_pipeline.engines.base import ExitCode, category
from cog_pipeline.run.rundir import RUN_RECORD_VERSION, DamagedRunDir, RunDir, RunInfo, remove_empty_run_dirs, survey_run_dirs
from cog_pipeline.run.state import TRANSITIONS, IllegalTransition, RunState, check_transition

TS = "20260101-000000"


def make_run(work: Path, state: RunState = RunState.CLAIMED, ts: str = TS, **facts) -> RunDir:
    run = RunDir(work / f"workflow-run-{ts}")
    run.path.mkdir(parents=True, exist_ok=True)
    run.save(RunInfo(ts, "in", "out", "m_raw.csv", f"m_processing-{ts}.csv", {}, state, **facts))
    return run


def test_the_built_converter_exits_with_the_codes_the_engines_classify(tmp_path: Path) -> None:
    """The built zipapp reports a missing input with the code the engines read as INPUT_UNREADABLE."""
    from cog_pipeline.transformations.build import build_zipapp

    exe = build_zipapp(tmp_path / "build")
    proc = subprocess.run([sys.executable, str(exe), str(tmp_path / "absent.tif"), str(tmp_path / "o.tif"),
                           str(tmp_path / "o.jpg"), "--bands", "1"], capture_output=True, text=True)
    assert category(proc.returncode) == ExitCode.INPUT_UNREADABLE.name
    assert proc.stderr.strip().startswith("INPUT_UNREADABLE")


@pytest.mark.parametrize("old", list(RunState))
def test_every_move_not_in_the_table_is_refused(old: RunState) -> None:
    for new in RunState:
        if new is old or new in TRANSITIONS[old]:
            check_transition(old, new)
        else:
            with pytest.raises(IllegalTransition, match=f"is {old}; it cannot move to {new}"):
                check_transition(old, new)


def test_a_reconciled_run_cannot_move_back(tmp_path: Path) -> None:
    run = make_run(tmp_path, RunState.RECONCILED)
    with pytest.raises(IllegalTransition):
        run.set_state(RunState.RUNNING)
    assert run.load().state is RunState.RECONCILED


def test_unknown_fields_survive_a_round_trip(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    data = json.loads(run.file("run.json").read_text())
    run.file("run.json").write_text(json.dumps({**data, "from_the_future": {"a": 1}}))
    run.set_state(RunState.GENERATED, jobs=3)
    saved = json.loads(run.file("run.json").read_text())
    assert saved["from_the_future"] == {"a": 1} and saved["jobs"] == 3 and saved["state"] == "generated"


def test_a_version_1_record_is_migrated(tmp_path: Path) -> None:
    run = RunDir(tmp_path / f"workflow-run-{TS}")
    run.path.mkdir()
    run.file("run.json").write_text(json.dumps({
        "timestamp": TS, "input_bucket": "in", "output_bucket": "out", "manifest_key": "m_raw.csv",
        "processing_key": "p", "store": {}, "state": "generated", "engine": "pegasus",
        "extra": {"plan_attempts": 2, "owner_pid": 1, "owner_host": "h", "mystery": 5},
    }))
    info = run.load()
    assert (info.pegasus.plan_attempts, info.owner, info.unknown, info.version) == (2, None, {"mystery": 5}, RUN_RECORD_VERSION)


def test_a_newer_version_is_refused_with_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    data = json.loads(run.file("run.json").read_text())
    run.file("run.json").write_text(json.dumps({**data, "version": RUN_RECORD_VERSION + 1}))
    with pytest.raises(DamagedRunDir, match="newer than this cog-pipeline reads") as err:
        run.load()
    assert "\n" not in str(err.value)


def test_damaged_run_dirs_are_each_reported_once_and_skipped(tmp_path: Path) -> None:
    good = make_run(tmp_path, ts="20260101-000001")
    truncated = make_run(tmp_path, ts="20260101-000002")
    truncated.file("run.json").write_text(truncated.file("run.json").read_text()[:40])
    stray = tmp_path / "workflow-run-20260101-000003"
    stray.mkdir()
    (stray / "manifest.csv").write_text("a.tif,1\n")
    (tmp_path / "workflow-run-99991231-235959").mkdir()  # empty: not a problem, removed under the scan lock
    runs, problems = survey_run_dirs(tmp_path)
    assert [(r.path, info.timestamp) for r, info in runs] == [(good.path, good.load().timestamp)]
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert "000002" in problems[0] and "000003" in problems[1]
    assert remove_empty_run_dirs(tmp_path) == [tmp_path / "workflow-run-99991231-235959"]
    assert stray.is_dir() and truncated.path.is_dir()


@pytest.mark.slow
def test_a_scan_goes_on_past_damaged_run_dirs(tmp_path: Path) -> None:
    """Issue 8.7 + 8.13: one truncated run.json and an empty run dir: one warning each, the manifest is processed."""
    from cog_pipeline.examples import write_raster

    root = tmp_path / "buckets"
    write_raster(root / "in" / "a.tif", 1, size=32)
    (root / "in" / "m_raw.csv").write_text("a.tif,1\n")
    (root / "out").mkdir()
    work = tmp_path / "work"
    broken = make_run(work, ts="20250101-000000")
    broken.file("run.json").write_text("{\"timestamp\": ")
    (work / "workflow-run-20250101-000001").mkdir()
    result = CliRunner().invoke(cli, ["scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-w", str(work), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("workflow-run-20250101-000000") == 1
    assert "removed" in result.output and not (work / "workflow-run-20250101-000001").exists()
    assert [p.name for p in (root / "in").glob("m_processed-*.csv")]


def test_a_lease_whose_pid_now_belongs_to_another_process_is_dead(tmp_path: Path) -> None:
    """Issue 8.8: the PID is alive (it is this very process) but started at another time: not the owner."""
    mine = lease.mine()
    reused = lease.Lease(mine.host, mine.boot_id, mine.pid, str(int(mine.started) + 1), mine.expires)
    assert lease.is_alive(mine) and not lease.is_alive(reused)
    run = make_run(tmp_path, owner=reused.to_json())
    assert not run.is_owned() and run.acquire_lease() is True
    assert lease.is_mine(run.load().lease)


def test_a_lease_from_another_host_holds_until_it_expires() -> None:
    other = lease.Lease("another-host", "b", 1, "1", expires=1000.0)
    assert lease.is_alive(other, now=999.0) and not lease.is_alive(other, now=1000.0)


def _reconciled_run(tmp_path: Path) -> tuple[RunDir, Path]:
    from cog_pipeline.examples import write_raster

    root = tmp_path / "buckets"
    write_raster(root / "in" / "a.tif", 1, size=32)
    (root / "in" / "m_raw.csv").write_text("a.tif,1\nmissing.tif,1\n")
    (root / "out").mkdir()
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["scan", "--local-root", str(root), "--input-bucket", "in", "--output-bucket", "out", "-w", str(work), "--quiet"])
    assert result.exit_code == 0, result.output
    (run,) = [RunDir(p) for p in work.glob("workflow-run-*")]
    return run, root / "in"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "reconcile"])
def test_run_and_reconcile_on_a_finished_run_say_so_and_change_nothing(tmp_path: Path, command: str) -> None:
    """Issue 8.6: the operator renamed the failed file to resubmit it; `run`/`reconcile` must not re-create it."""
    run, inbox = _reconciled_run(tmp_path)
    (failed,) = [p for p in inbox.glob("m_failed-*.csv") if not p.name.endswith("-reasons.csv")]
    failed.rename(inbox / "m_retry_raw.csv")
    before = run.file("run.json").read_bytes()
    result = CliRunner().invoke(cli, [command, str(run.path)])
    assert result.exit_code == 0, result.output
    assert "already" in result.output
    assert run.file("run.json").read_bytes() == before
    assert not [p for p in inbox.glob("m_failed-*.csv") if not p.name.endswith("-reasons.csv")]
