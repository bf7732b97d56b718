"""Reading real submit directories (planned and run by a real Pegasus 5.0.5 + DAGMan; see ../shared/testdata)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cog_pipeline.engines.pegasus.submit_dir import (
    classify,
    job_counts,
    read_kickstart,
    read_submit_dir,
    submit_dir_for_hook,
)




def test_successful_run_every_job_succeeded_and_the_dag_ended_0(samples):
    run = read_submit_dir(samples / "process_wf_success")
    assert run.end.ended and run.end.status == 0
    assert run.braindump["dag"] == "process-0.dag"
    assert {name: job.finished for name, job in run.jobs.items()} == dict.fromkeys(run.jobs, True)
    ls = run.kickstart["ls_ID0000001"]
    assert (ls.classification, ls.exit_code, ls.host) == ("success", 0, "workflow.isi.edu")


def test_job_that_failed_twice_has_its_attempts_exit_code_and_stderr(samples):
    run = read_submit_dir(samples / "process_wf_failure")
    assert run.end.ended and run.end.status == 1
    job = run.jobs["ls_ID0000001"]
    assert (job.finished, job.attempts, job.exit_code) == (False, 2, 2)
    record = run.kickstart["ls_ID0000001"]
    assert record.path.name == "ls_ID0000001.out.001"  # the latest attempt's record
    assert record.exit_code == 2 and record.classification == "failure"
    assert "invalid option -- 'z'" in record.stderr
    assert record.duration == pytest.approx(0.003)


def test_held_job_is_counted_as_held_then_failed(samples):
    run = read_submit_dir(samples / "sample_wf_held")
    job = run.jobs["chebi_drug_loader_ID0000001"]
    assert job.held == 1 and job.finished is False and job.state == "POST_SCRIPT_FAILURE"
    assert run.kickstart["chebi_drug_loader_ID0000001"].reason == "Empty stdout"
    assert run.end.ended and run.end.status == 1


def test_job_counts_fall_back_to_the_logs(samples, monkeypatch):
    from cog_pipeline.engines.pegasus import submit_dir

    monkeypatch.setattr(submit_dir, "pegasus_status_command", lambda: None)  # as on a host without pegasus-wms
    source, counts = job_counts(samples / "process_wf_failure")
    assert source == "logs"
    assert counts == {"total": 2, "succeeded": 1, "failed": 1, "held": 0, "running": 0}


def test_dag_without_finish_line_has_not_ended(samples):
    log = samples / "process_wf_failure" / "jobstate.log"
    lines = [line for line in log.read_text().splitlines() if "DAGMAN_FINISHED" not in line]
    log.write_text("\n".join(lines) + "\n")
    assert not read_submit_dir(samples / "process_wf_failure").end.ended


def test_end_hook_prefers_pegasus_submit_dir(tmp_path):
    hand = tmp_path / "by-hand"
    hand.mkdir()
    recorded = tmp_path / "recorded"
    assert submit_dir_for_hook({"PEGASUS_SUBMIT_DIR": str(hand)}, recorded) == hand
    assert submit_dir_for_hook({}, recorded) == recorded
    assert submit_dir_for_hook({}, None) is None


def _kickstart_outputs(samples: Path) -> list[Path]:
    return sorted(samples.rglob("*.out.[0-9][0-9][0-9]"))


@pytest.mark.slow
def test_classification_matches_the_real_pegasus_exitcode(samples, tmp_path):
    try:
        import Pegasus.exitcode  # noqa: F401 - ships with pegasus-wms
        import Pegasus
    except ImportError:
        pytest.skip("pegasus-wms is not installed: no real pegasus-exitcode")
    tool = Path(Pegasus.__file__).parent / "cli" / "pegasus-exitcode.py"
    outputs = _kickstart_outputs(samples)
    assert len(outputs) >= 10
    seen = set()
    for n, out in enumerate(outputs):
        work = tmp_path / f"job{n}"
        work.mkdir()
        target = work / "job.out"  # pegasus-exitcode only reads files named *.out
        shutil.copyfile(out, target)
        err = out.with_name(out.name.replace(".out.", ".err."))
        (work / "job.err").write_bytes(err.read_bytes() if err.is_file() else b"")
        real = subprocess.run([sys.executable, str(tool), "--no-rename", "--no-metadata", str(target)], capture_output=True, text=True, timeout=60)
        ours, _ = classify(out.read_text(encoding="utf-8", errors="replace"))
        assert (real.returncode == 0) == (ours == "success"), f"{out.name}: pegasus-exitcode rc={real.returncode}, ours={ours}"
        assert read_kickstart(out).classification == ours
        seen.add(ours)
    assert seen == {"success", "failure"}  # both outcomes were compared


# The DAG's event log is not part of the samples; this one follows HTCondor's user-log format for the held
# job's life (submit, held for a transfer failure, released, terminated) and is parsed by htcondor2 itself.
HELD_EVENT_LOG = """000 (106.000.000) 2023-03-05 09:10:47 Job submitted from host: <128.9.46.53:9618?addrs=128.9.46.53-9618>
    DAG Node: chebi_drug_loader_ID0000001
...
012 (106.000.000) 2023-03-05 09:11:22 Job was held.
\tTransfer input files failure
\tCode 13 Subcode 2
...
013 (106.000.000) 2023-03-05 09:11:40 Job was released.
\tvia condor_release (by user mzalam)
...
005 (106.000.000) 2023-03-05 09:12:02 Job terminated.
\t(1) Normal termination (return value 1)
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage
\t0  -  Run Bytes Sent By Job
\t0  -  Run Bytes Received By Job
\t0  -  Total Bytes Sent By Job
\t0  -  Total Bytes Received By Job
...
"""


def test_condor_event_log_gives_holds_and_releases_per_node(samples):
    pytest.importorskip("htcondor2", reason="the HTCondor bindings are not installed")
    from cog_pipeline.engines.pegasus.submit_dir import condor_events, holds_by_node, read_braindump

    submit = samples / "sample_wf_held"
    (submit / read_braindump(submit)["condor_log"]).write_text(HELD_EVENT_LOG)
    events = condor_events(submit)
    assert [e["type"] for e in events] == ["SUBMIT", "JOB_HELD", "JOB_RELEASED", "JOB_TERMINATED"]
    assert events[-1]["return_value"] == 1 and events[1]["hold_code"] == 13
    assert holds_by_node(events) == {"chebi_drug_loader_ID0000001": {"held": 1, "released": 1, "last_hold_reason": "Transfer input files failure"}}


@pytest.mark.slow
def test_job_counts_from_the_real_pegasus_status(samples):
    pytest.importorskip("Pegasus.cli", reason="pegasus-wms is not installed")
    source, root = job_counts(samples / "process_wf_failure")
    assert source == "pegasus-status"
    assert (root["succeeded"], root["failed"], root["state"]) == (1, 1, "Failure")
