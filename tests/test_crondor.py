"""crondor/: the Crondor submit description (checked through the htcondor2 bindings) and start/stop/status.

Only the schedd is replaced (engine_pegasus.schedd returns FakeSchedd): it turns a real htcondor2.Submit into a
job ad the way the schedd does for the attributes used here, evaluates query constraints with classad2, and
records submit/act calls. Everything else is the real code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import classad2
import htcondor2
import pytest
from click.testing import CliRunner

from cog_pipeline.engines.pegasus import condor
from cog_pipeline.cli import main as cli
from cog_pipeline.crondor import submit as crondor_submit
from cog_pipeline.crondor.submit import CrondorSpec, build_submit, render_description
from cog_pipeline.rundir import GENERATED, RUNNING, RunDir, RunInfo

ACCESS = "AKIACRONDORTESTKEY"
SECRET = "crondor/Secret+Key=MUST-NOT-APPEAR"


class FakeSchedd:
    """The schedd boundary: a job list, ClassAd-evaluated queries, recorded submits and actions."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.submitted: list[str] = []
        self.actions: list[tuple] = []
        self.next_cluster = 101

    def submit(self, description, count=0, **_):
        assert isinstance(description, htcondor2.Submit)
        text = str(description)
        self.submitted.append(text)
        ad = {"ClusterId": self.next_cluster, "ProcId": 0, "JobStatus": 1, "NumJobStarts": 0}
        for name, value in description.items():
            lower = name.lower()
            if lower.startswith("my.") or lower.startswith("+"):
                ad[name.split(".", 1)[-1].lstrip("+")] = classad2.ExprTree(value).eval()
            elif lower == "batch_name":
                ad["JobBatchName"] = value
            elif lower == "initialdir":
                ad["Iwd"] = value
            elif lower == "universe":
                ad["JobUniverse"] = {"local": 12, "scheduler": 7, "vanilla": 5}[value]
        if any(k.lower().startswith("cron_") for k in description.keys()):
            ad["DeferralTime"] = (int(time.time()) // 900 + 1) * 900
        self.jobs.append(ad)
        self.next_cluster += 1
        cluster = ad["ClusterId"]

        class Result:
            def cluster(self):
                return cluster

        return Result()

    def query(self, constraint="True", projection=(), **_):
        expr = classad2.ExprTree(str(constraint))
        return [classad2.ClassAd(job) for job in self.jobs if expr.eval(classad2.ClassAd(job)) is True]

    def act(self, action, job_spec, reason=None):
        self.actions.append((action, job_spec, reason))
        ids = {job_spec} if isinstance(job_spec, str) else set(job_spec)
        for job in self.jobs:
            if f"{job['ClusterId']}.{job['ProcId']}" in ids and action == htcondor2.JobAction.Remove:
                job["JobStatus"] = 3  # removed; it leaves the queue a moment later


@pytest.fixture()
def schedd(monkeypatch) -> FakeSchedd:
    fake = FakeSchedd()
    monkeypatch.setattr(condor, "schedd", lambda: fake)
    return fake


@pytest.fixture()
def key_files(tmp_path) -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "access").write_text(ACCESS + "\n")
    (keys / "secret").write_text(SECRET + "\n")
    return keys / "access", keys / "secret"


def condor_argv(value: str) -> list[str]:
    """Split a new-syntax (double-quoted) arguments/environment value back into its items."""
    assert value.startswith('"') and value.endswith('"'), value
    body, items, current, quoted, i, started = value[1:-1].replace('""', '"'), [], [], False, 0, False
    while i < len(body):
        ch = body[i]
        if ch == "'":
            if quoted and body[i + 1 : i + 2] == "'":
                current.append("'")
                i += 2
                continue
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if current or started:
                items.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
        i += 1
    if current or started:
        items.append("".join(current))
    return items


def start_args(work: Path, *extra: str, pattern: str = "*raw.csv") -> list[str]:
    return ["crondor", "start", "--input-bucket", "cog-in", "--output-bucket", "cog-out", "-p", pattern, "-w", str(work), *extra]


# ---------------------------------------------------------------------------------------------------------------
# The description


@pytest.mark.slow
def test_description_through_the_htcondor_bindings(tmp_path, key_files):
    work = tmp_path / "work"
    spec = CrondorSpec(
        "cog-in", "cog-out", work, endpoint="https://s3.example.org", access_key_file=key_files[0],
        secret_key_file=key_files[1], max_running=500, retries=2, cluster_size=20,
    )
    sub = build_submit(spec)
    assert isinstance(sub, htcondor2.Submit)
    assert sub["universe"] == "local"
    assert sub["cron_minute"] == "*/15" and sub["cron_hour"] == "*" and sub["cron_day_of_week"] == "*"
    assert sub["on_exit_remove"] == "false"
    assert sub["batch_name"] == "COG-Pipeline-Crondor-*raw.csv"
    assert classad2.ExprTree(sub["MY.CogPipelineKey"]).eval() == "cog-in|cog-out|*raw.csv"
    assert sub["initialdir"] == str(work)
    for name in ("output", "error", "log"):
        assert Path(sub[name]).parent == work
    assert sub["getenv"] == "false"
    executable = Path(sub["executable"])
    assert executable.is_absolute() and os.access(executable, os.X_OK)
    argv = condor_argv(sub["arguments"])
    if executable.name != "cog-pipeline":  # `python -m cog_pipeline` fallback
        assert argv[:2] == ["-m", "cog_pipeline"]
        argv = argv[2:]
    assert argv == [
        "scan", "--engine", "pegasus", "--input-bucket", "cog-in", "--output-bucket", "cog-out", "-p", "*raw.csv",
        "-e", "https://s3.example.org", "-a", str(key_files[0]), "-s", str(key_files[1]),
        "--work-dir", str(work), "-m", "500", "--retries", "2", "--cluster-size", "20", "--quiet",
    ]
    env = dict(item.split("=", 1) for item in condor_argv(sub["environment"]))
    assert "PATH" in env and str(Path(sys.executable).parent) in env["PATH"].split(os.pathsep)
    assert not set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def test_written_description_is_the_submitted_one(tmp_path, schedd):
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--local-root", str(tmp_path / "buckets")))
    assert result.exit_code == 0, result.output
    on_disk = htcondor2.Submit((work / "crondor.sub").read_text())
    assert dict(on_disk) == dict(htcondor2.Submit(schedd.submitted[0]))
    assert (work / "crondor.sub").read_text().startswith("# cog-pipeline Crondor")


def test_awkward_names_are_quoted_for_condor(tmp_path):
    spec = CrondorSpec("in bucket", "out", tmp_path / "w d", pattern="Counties/it's *raw.csv", command=["/opt/cog pipeline/bin/cog-pipeline"])
    sub = htcondor2.Submit(render_description(spec))
    argv = condor_argv(sub["arguments"])
    assert argv[argv.index("--input-bucket") + 1] == "in bucket"
    assert argv[argv.index("-p") + 1] == "Counties/it's *raw.csv"
    assert argv[argv.index("--work-dir") + 1] == str(tmp_path / "w d")
    assert classad2.ExprTree(sub["MY.CogPipelineKey"]).eval() == "in bucket|out|Counties/it's *raw.csv"
    assert '"' not in sub["batch_name"] and "'" not in sub["batch_name"]
    with pytest.raises(ValueError):
        CrondorSpec("in", "out", tmp_path, pattern="a\nqueue 100").validate()


def test_the_tick_command_line_is_one_the_scan_accepts(tmp_path):
    """Run the Crondor's own argv (with --dry-run added) through the real CLI against folder buckets."""
    root = tmp_path / "buckets"
    (root / "cog-in").mkdir(parents=True)
    (root / "cog-out").mkdir()
    (root / "cog-in" / "a_raw.csv").write_text("a.tif,1\n")
    spec = CrondorSpec("cog-in", "cog-out", tmp_path / "work", local_root=root)
    sub = build_submit(spec)
    argv = condor_argv(sub["arguments"])
    argv = argv[2:] if argv[:2] == ["-m", "cog_pipeline"] else argv
    result = CliRunner().invoke(cli, [*argv, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would claim a_raw.csv" in result.output
    version = subprocess.run([sub["executable"], *([] if Path(sub["executable"]).name == "cog-pipeline" else ["-m", "cog_pipeline"]), "--version"], capture_output=True, text=True)
    assert version.returncode == 0


def test_no_secret_in_anything_written_or_submitted(tmp_path, schedd, key_files, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "-e", "http://127.0.0.1:9000", "-a", str(key_files[0]), "-s", str(key_files[1])))
    assert result.exit_code == 0, result.output
    texts = {"submitted": schedd.submitted[0], "output": result.output}
    texts.update({str(p): p.read_text(errors="replace") for p in work.rglob("*") if p.is_file()})
    assert len(texts) >= 3
    for where, text in texts.items():
        assert ACCESS not in text and SECRET not in text, where
    assert str(key_files[0]) in schedd.submitted[0] and str(key_files[1]) in schedd.submitted[0]
    assert "AWS_SECRET_ACCESS_KEY" not in schedd.submitted[0]


# ---------------------------------------------------------------------------------------------------------------
# start / stop / status


def test_start_twice_gives_one_crondor(tmp_path, schedd):
    work = tmp_path / "work"
    first = CliRunner().invoke(cli, start_args(work))
    assert first.exit_code == 0, first.output
    assert "job 101.0" in first.output
    second = CliRunner().invoke(cli, start_args(work))
    assert second.exit_code == 1
    assert "already queued: job 101.0" in second.output and "crondor stop" in second.output
    assert len(schedd.submitted) == 1
    assert [j["CogPipelineKey"] for j in schedd.jobs] == ["cog-in|cog-out|*raw.csv"]
    # Another work directory does not make it a different Crondor either: same buckets + pattern.
    third = CliRunner().invoke(cli, start_args(tmp_path / "elsewhere"))
    assert third.exit_code == 1 and len(schedd.jobs) == 1
    # A different pattern is a different Crondor.
    other = CliRunner().invoke(cli, start_args(work, pattern="Counties/*raw.csv"))
    assert other.exit_code == 0, other.output
    assert sorted(j["JobBatchName"] for j in schedd.jobs) == ["COG-Pipeline-Crondor-*raw.csv", "COG-Pipeline-Crondor-Counties/*raw.csv"]


def test_stop_removes_it_and_start_works_again(tmp_path, schedd):
    work = tmp_path / "work"
    assert CliRunner().invoke(cli, start_args(work)).exit_code == 0
    other = CliRunner().invoke(cli, start_args(work, pattern="other*raw.csv"))
    assert other.exit_code == 0
    stop = CliRunner().invoke(cli, ["crondor", "stop", "--input-bucket", "cog-in", "--output-bucket", "cog-out"])
    assert stop.exit_code == 0, stop.output
    assert schedd.actions == [(htcondor2.JobAction.Remove, ["101.0"], "cog-pipeline crondor stop")]
    assert [j["JobStatus"] for j in schedd.jobs] == [3, 1], "only the Crondor for this pattern is removed"
    again = CliRunner().invoke(cli, ["crondor", "stop", "--input-bucket", "cog-in", "--output-bucket", "cog-out"])
    assert "no Crondor queued" in again.output and len(schedd.actions) == 1
    restart = CliRunner().invoke(cli, start_args(work))
    assert restart.exit_code == 0 and "job 103.0" in restart.output


def _run_dir(work: Path, ts: str, state: str, **extra) -> RunDir:
    run = RunDir(work / f"workflow-run-{ts}")
    run.path.mkdir(parents=True)
    run.save(RunInfo(timestamp=ts, input_bucket="cog-in", output_bucket="cog-out", manifest_key=f"{ts}_raw.csv",
                     processing_key=f"{ts}_processing-{ts}.csv", store={}, state=state, engine="pegasus", **extra))
    return run


def test_status_shows_the_crondor_and_runs_in_flight(tmp_path, schedd, monkeypatch):
    work = tmp_path / "work"
    assert CliRunner().invoke(cli, start_args(work)).exit_code == 0
    submit_dir = work / "workflow-run-20240102-030405" / "submit" / "cog" / "pegasus" / "cog" / "run0001"
    _run_dir(work, "20240102-030405", RUNNING, submit_dir=str(submit_dir), dagman_cluster=555)
    submit_dir.mkdir(parents=True)
    _run_dir(work, "20240102-040506", GENERATED, engine_waiting="pegasus-plan not found")
    schedd.jobs.append({"ClusterId": 555, "ProcId": 0, "JobStatus": 2, "JobUniverse": 7, "Iwd": str(submit_dir)})
    # Without pegasus-status on PATH: a clear note instead of job counts.
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = CliRunner().invoke(cli, ["crondor", "status"])
    assert result.exit_code == 0, result.output
    assert "COG-Pipeline-Crondor-*raw.csv" in result.output and "next tick: 20" in result.output
    assert "runs in flight under" in result.output and "2024" in result.output
    assert f"submit dir: {submit_dir}" in result.output
    assert "pegasus-status is not installed" in result.output
    assert "waiting: pegasus-plan not found" in result.output
    # With pegasus-status: its output for each submitted run.
    tool = empty / "pegasus-status"
    tool.write_text("#!/bin/sh\necho \"pegasus-status called with: $*\"\n")
    tool.chmod(0o755)
    result = CliRunner().invoke(cli, ["status", "-w", str(work), "--long"])
    assert result.exit_code == 0, result.output
    assert f"pegasus-status called with: -l {submit_dir}" in result.output
    # The DAG has left the queue: status says the next tick reconciles it.
    schedd.jobs.pop()
    result = CliRunner().invoke(cli, ["status", "-w", str(work)])
    assert "workflow ended; the next tick reconciles it" in result.output


def test_without_a_schedd_the_commands_say_so_in_one_line(tmp_path, monkeypatch):
    def unreachable():
        raise htcondor2.HTCondorException("Unable to locate local daemon.")

    monkeypatch.setattr(condor, "schedd", unreachable)
    for args in (start_args(tmp_path / "work"), ["crondor", "stop", "--input-bucket", "a", "--output-bucket", "b"], ["crondor", "status"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "HTCondor" in lines[0] and "--engine local" in lines[0]
        assert "Traceback" not in result.output


def test_dry_run_writes_the_description_without_a_schedd(tmp_path, monkeypatch):
    monkeypatch.setattr(condor, "schedd", lambda: pytest.fail("dry run must not contact the schedd"))
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert (work / "crondor.sub").is_file() and "cron_minute       = */15" in result.output


def test_checked_in_template_renders_every_placeholder(tmp_path):
    text = crondor_submit.TEMPLATE.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == set(crondor_submit.template_values(CrondorSpec("a", "b", tmp_path)))
    assert "${" not in render_description(CrondorSpec("a", "b", tmp_path))
