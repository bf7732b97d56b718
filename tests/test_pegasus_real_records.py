"""Per-row reasons and monitoring from the REAL submit directories in ../shared/testdata (Pegasus + DAGMan).

A run directory whose workflow has job ID0000001 (manifest line 1) is finished by its END hook the way
pegasus-monitord runs it: ``cog-pipeline finish RUN_DIR`` with ``PEGASUS_SUBMIT_DIR`` in the environment. The
sample's node ``ls_ID0000001`` is that job (conversion nodes are ``<transformation>_<job id>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli.main import main as cli
from cog_pipeline.engines.pegasus.records import collect_job_records
from cog_pipeline.pegasus.workflow_gen import WorkflowSettings, generate
from cog_pipeline.run.rundir import RUNNING, Decisions, RunDir
from cog_pipeline.cli.status import status_row

from .test_pegasus_wiring import folder_run




def hand_planned_run(tmp_path: Path) -> RunDir:
    """Generated for the pegasus engine, then planned and run by hand: run.json names no submit dir."""
    run, store = folder_run(tmp_path, ["Counties/WI/Eau Claire/x.tif", "Counties/WI/Wood/y.tif"], engine="pegasus")
    generate(run, store, WorkflowSettings())
    run.set_state(RUNNING)
    (Path(run.load().store["local_root"]) / "in" / run.load().processing_key).parent.mkdir(parents=True, exist_ok=True)
    (Path(run.load().store["local_root"]) / "in" / run.load().processing_key).write_text("claimed\n")
    return run


def test_end_hook_takes_reasons_from_the_real_failed_job_via_pegasus_submit_dir(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    assert run.load().pegasus.submit_dir is None
    result = CliRunner().invoke(cli, ["finish", str(run.path)], env={"PEGASUS_SUBMIT_DIR": str(samples / "process_wf_failure")})
    assert result.exit_code == 0, result.output
    rows = {r["line"]: r for r in Decisions.load(run.path).failed_sample}
    # line 1 is the sample's failed job: the converter's (here ls's) last stderr line from the latest attempt
    assert 1 in rows
    assert rows[1]["reason"] == "USAGE: Try '/bin/ls --help' for more information. (after 2 attempts)"  # exit 2: the usage category
    assert "no job record" in rows[2]["reason"]  # line 2 never ran in that DAG
    record = json.loads((run.jobs_dir / "ID0000001.json").read_text())
    assert (record["exit_code"], record["attempts"], record["key"]) == (2, 2, "Counties/WI/Eau Claire/x.tif")


def test_without_pegasus_submit_dir_the_recorded_submit_dir_is_read(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    run.update(submit_dir=str(samples / "process_wf_failure"))
    assert collect_job_records(run, env={}) == 1
    assert json.loads((run.jobs_dir / "ID0000001.json").read_text())["status"] == "failed"


def test_real_successful_job_gives_a_succeeded_record(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    assert collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(samples / "process_wf_success")}) == 1
    record = json.loads((run.jobs_dir / "ID0000001.json").read_text())
    assert (record["status"], record["exit_code"], record["reason"]) == ("succeeded", 0, "")


def test_real_held_then_aborted_job_is_failed_as_held(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    assert collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(samples / "sample_wf_held")}) == 1
    record = json.loads((run.jobs_dir / "ID0000001.json").read_text())
    assert (record["status"], record["category"]) == ("failed", "HELD")
    assert f"pegasus-analyzer {samples / 'sample_wf_held'}" in record["reason"]


def test_stage_and_cleanup_nodes_get_no_record(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(samples / "process_wf_failure")})
    assert sorted(p.name for p in run.jobs_dir.iterdir()) == ["ID0000001.json"]


@pytest.mark.slow
def test_status_shows_dagman_state_counts_and_the_analyzer_command(tmp_path, samples):
    run = hand_planned_run(tmp_path)
    run.update(submit_dir=str(samples / "process_wf_failure"))
    row = status_row(run)
    assert row["dagman"] == "Failure" and row["failed"] == 1 and row["done"] == 1
    assert row["analyzer"] == f"pegasus-analyzer {samples / 'process_wf_failure'}"
    assert {"run", "state", "done", "failed", "age", "engine", "where"} <= set(row)
    result = CliRunner().invoke(cli, ["status", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"submit dir: {samples / 'process_wf_failure'}" in result.output
    assert "DAGMan: Failure" in result.output and "1 failed" in result.output
    assert f"failures: pegasus-analyzer {samples / 'process_wf_failure'}" in result.output


def test_status_counts_from_the_logs_without_pegasus_status(tmp_path, samples, monkeypatch):
    from cog_pipeline.engines.pegasus import submit_dir

    monkeypatch.setattr(submit_dir, "pegasus_status_command", lambda: None)
    run = hand_planned_run(tmp_path)
    run.update(submit_dir=str(samples / "sample_wf_held"))
    row = status_row(run)
    assert row["counts_from"] == "logs" and row["failed"] == 1
    assert row["dagman"] == "Failure (DAGMan exit 1)"


def test_an_event_log_htcondor_cannot_read_does_not_lose_the_reasons(tmp_path, samples):
    pytest.importorskip("htcondor2", reason="the HTCondor bindings are not installed")
    from cog_pipeline.engines.pegasus.submit_dir import condor_events

    submit = samples / "process_wf_failure"
    # A terminate event without its usage lines: htcondor2 raises ULOG_RD_ERROR at it.
    (submit / "process-0.dag.dagman.log").write_text(
        "000 (7.000.000) 2023-03-03 23:09:48 Job submitted from host: <127.0.0.1:9618>\n...\n"
        "005 (7.000.000) 2023-03-03 23:11:26 Job terminated.\n\t(1) Normal termination (return value 1)\n...\n"
    )
    assert [e["type"] for e in condor_events(submit)] == ["SUBMIT"]  # what was readable is kept
    run = hand_planned_run(tmp_path)
    assert collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(submit)}) == 1


@pytest.mark.slow
def test_status_table_is_the_shared_renderer_fed_with_pegasus_facts(tmp_path, samples):
    from cog_pipeline.cli.operator import render_status_table

    run = hand_planned_run(tmp_path)
    run.update(submit_dir=str(samples / "process_wf_failure"))
    table = render_status_table([status_row(run)], width=400)
    assert run.path.name in table and str(samples / "process_wf_failure") in table and "pegasus" in table
    result = CliRunner().invoke(cli, ["status", "-w", str(tmp_path)])
    assert run.path.name in result.output.split("- ")[0]  # the table comes before the per-run details


def test_held_reason_from_the_event_log_reaches_the_record(tmp_path, samples):
    pytest.importorskip("htcondor2", reason="the HTCondor bindings are not installed")
    from cog_pipeline.engines.pegasus.submit_dir import read_braindump

    from .test_submit_dir import HELD_EVENT_LOG

    submit = samples / "sample_wf_held"
    (submit / read_braindump(submit)["condor_log"]).write_text(HELD_EVENT_LOG)
    run = hand_planned_run(tmp_path)
    assert collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(submit)}) == 1
    record = json.loads((run.jobs_dir / "ID0000001.json").read_text())
    assert record["category"] == "HELD" and "(Transfer input files failure)" in record["reason"]


REMOVED = Path(__file__).parent / "data" / "pegasus-real" / "removed"  # condor_rm of a real DAG right after its submit


def test_rows_of_a_removed_workflow_say_it_was_removed(tmp_path):
    import shutil

    from cog_pipeline.engines.pegasus.records import REMOVED_REASON
    from cog_pipeline.engines.pegasus.submit_dir import dag_was_removed

    run = hand_planned_run(tmp_path)
    shutil.copy(REMOVED / "workflow.yml", run.file(RunDir.WORKFLOW))  # its two jobs, lines 1 and 2
    assert dag_was_removed(REMOVED)
    assert collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(REMOVED)}) == 2
    records = [json.loads(p.read_text()) for p in sorted(run.jobs_dir.glob("*.json"))]
    assert [(r["line"], r["category"], r["reason"]) for r in records] == [(1, "REMOVED", REMOVED_REASON), (2, "REMOVED", REMOVED_REASON)]
    assert [r["key"] for r in records] == ["plain/c.tif", "Counties/WI/Eau Claire/a.tif"]


def test_a_workflow_that_ended_by_itself_was_not_removed(samples):
    from cog_pipeline.engines.pegasus.submit_dir import dag_was_removed

    assert not dag_was_removed(samples / "process_wf_failure") and not dag_was_removed(samples / "process_wf_success")


HELD = Path(__file__).parent / "data" / "pegasus-real" / "held"  # condor_hold of both jobs, one released


def test_a_job_left_held_fails_its_row_with_the_hold_reason_from_htcondor_25s_nodes_log(tmp_path):
    import shutil

    run = hand_planned_run(tmp_path)
    shutil.copy(HELD / "workflow.yml", run.file(RunDir.WORKFLOW))
    collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(HELD)})
    records = {r["job_id"]: r for r in (json.loads(p.read_text()) for p in run.jobs_dir.glob("*.json"))}
    assert records["ID0000001"]["status"] == "succeeded"  # held, released, converted
    assert records["ID0000002"]["category"] == "HELD"
    assert records["ID0000002"]["reason"].startswith("held (via condor_hold (by user coguser)) and removed")


STAGE_OUT_FAILED = Path(__file__).parent / "data" / "pegasus-real" / "stage-out-failed"


def test_a_converted_row_whose_own_stage_out_failed_says_so(tmp_path):
    import shutil

    run = hand_planned_run(tmp_path)
    shutil.copy(STAGE_OUT_FAILED / "workflow.yml", run.file(RunDir.WORKFLOW))
    collect_job_records(run, env={"PEGASUS_SUBMIT_DIR": str(STAGE_OUT_FAILED)})
    (record,) = [json.loads(p.read_text()) for p in run.jobs_dir.glob("*.json")]
    assert (record["job_id"], record["status"], record["category"]) == ("ID0000001", "failed", "STAGE_OUT_FAILED")
    assert record["exit_code"] == 0 and record["reason"].startswith("converted, but the stage-out to the output bucket failed")
