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
from cog_pipeline.cli.main import main as cli
from cog_pipeline.crondor import submit as crondor_submit
from cog_pipeline.crondor.submit import CrondorSpec, build_submit, render_description
from cog_pipeline.run.rundir import GENERATED, RUNNING, RunDir, RunInfo

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
            elif lower == "log":
                ad["UserLog"] = value
            elif lower.startswith("cron_") and lower != "cron_window":
                ad["Cron" + "".join(part.title() for part in lower[5:].split("_"))] = value
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
        secret_key_file=key_files[1], settings={"dagman.max_running": 500, "dagman.retries": 2, "clustering.size": 20},
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
        "--work-dir", str(work), "--max-running", "500", "--retries", "2", "--cluster-size", "20", "--quiet",
    ]
    env = dict(item.split("=", 1) for item in condor_argv(sub["environment"]))
    # Pegasus' tools never find this venv's python3 first: its bin folder is not on the tick's PATH at all.
    assert "PATH" in env and str(Path(sys.executable).parent) not in env["PATH"].split(os.pathsep)
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


def _run_dir(work: Path, ts: str, state: str, **facts) -> RunDir:
    run = RunDir(work / f"workflow-run-{ts}")
    run.path.mkdir(parents=True)
    info = RunInfo(timestamp=ts, input_bucket="cog-in", output_bucket="cog-out", manifest_key=f"{ts}_raw.csv",
                   processing_key=f"{ts}_processing-{ts}.csv", store={}, state=state, engine="pegasus")
    for name, value in facts.items():  # core facts, or the Pegasus engine's (they land in info.pegasus)
        info.set_fact(name, value)
    run.save(info)
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
    assert "COG-Pipeline-Crondor-*raw.csv" in result.output and "waiting for its next tick at 20" in result.output
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
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--dry-run"))
    assert result.exit_code == 0, result.output
    # Where Pegasus cannot run, start says so in one line (each tick would refuse to claim).
    assert result.stderr.strip() == ("warning: Pegasus cannot run in the tick's environment: pegasus-plan and condor_submit_dag "
                                     "not found on PATH; each tick will say so and claim nothing")
    assert (work / "crondor.sub").is_file() and "cron_minute       = */15" in result.output and "cron_hour         = *" in result.output


def test_checked_in_template_renders_every_placeholder(tmp_path):
    text = crondor_submit.TEMPLATE.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == set(crondor_submit.template_values(CrondorSpec("a", "b", tmp_path)))
    assert "${" not in render_description(CrondorSpec("a", "b", tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# --schedule


@pytest.mark.parametrize("schedule, fields", [
    ("*/1 * * * *", ("*/1", "*", "*", "*", "*")),
    ("0,30 8-18 * 1-12/2 1-5", ("0,30", "8-18", "*", "1-12/2", "1-5")),
    ("  5   4 1 * 0 ", ("5", "4", "1", "*", "0")),
])
def test_schedule_is_recorded_in_the_description(tmp_path, schedule, fields):
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--schedule", schedule, "--dry-run"))
    assert result.exit_code == 0, result.output
    sub = htcondor2.Submit((work / "crondor.sub").read_text())
    assert tuple(sub[n] for n in ("cron_minute", "cron_hour", "cron_day_of_month", "cron_month", "cron_day_of_week")) == fields
    assert f"# CronTab scheduling (a \"Crondor\"): {' '.join(fields)}  (" in (work / "crondor.sub").read_text()


@pytest.mark.parametrize("schedule, named", [
    ("*/15 * * *", "give 5 cron fields"),
    ("*/15 * * * * *", "give 5 cron fields"),
    ("60 * * * *", "the minute field '60'"),
    ("* 24 * * *", "the hour field '24'"),
    ("* * 0 * *", "the day of month field '0'"),
    ("* * * 13 *", "the month field '13'"),
    ("* * * * mon", "the day of week field 'mon'"),
    ("*/0 * * * *", "the minute field '*/0'"),
    ("30-10 * * * *", "the minute field '30-10'"),
    ("1,,2 * * * *", "the minute field '1,,2'"),
    ("* * * * *\nqueue 100", "give 5 cron fields"),
])
def test_a_bad_schedule_is_one_line_and_nothing_is_written(tmp_path, schedd, schedule, named):
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--schedule", schedule))
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: crondor.schedule (--schedule)") and named in line, line
    assert not (work / "crondor.sub").exists() and not schedd.submitted


# ---------------------------------------------------------------------------------------------------------------
# The tick's environment


def _bin_with(tmp_path: Path, name: str, tools: dict[str, str]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for tool, text in tools.items():
        (folder / tool).write_text(text)
        (folder / tool).chmod(0o755)
    return folder


def test_tick_environment_is_explicit(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    source = {
        "PATH": os.pathsep.join([venv_bin, "/opt/elsewhere/bin", "/usr/bin", "/bin"]), "HOME": "/home/op",
        "PEGASUS_METRICS": "false", "PEGASUS_PYTHON": "/opt/pegasus/python-venv/bin/python3",
        "AWS_SECRET_ACCESS_KEY": SECRET, "PYTHONPATH": "/somewhere", "VIRTUAL_ENV": str(Path(sys.prefix)),
    }
    env = crondor_submit.tick_environment(source)
    assert env["PATH"].split(os.pathsep) == ["/opt/elsewhere/bin", "/usr/bin", "/bin"]
    assert env["PEGASUS_METRICS"] == "false", "an operator who turned metrics off keeps them off in every tick"
    assert env["PEGASUS_PYTHON"] == "/opt/pegasus/python-venv/bin/python3", "set by the operator: kept as is"
    assert env["HOME"] == "/home/op"
    assert not set(env) & {"AWS_SECRET_ACCESS_KEY", "PYTHONPATH", "VIRTUAL_ENV"}
    # Without Pegasus on PATH nothing is guessed: the tick's own check says what is missing.
    source.pop("PEGASUS_PYTHON")
    assert "PEGASUS_PYTHON" not in crondor_submit.tick_environment(source)
    # The written description carries it, and the executable is this venv's, by absolute path.
    spec = CrondorSpec("a", "b", tmp_path, environment=crondor_submit.tick_environment({**source, "PEGASUS_PYTHON": "/p/python3"}))
    sub = htcondor2.Submit(render_description(spec))
    described = dict(item.split("=", 1) for item in condor_argv(sub["environment"]))
    assert described["PEGASUS_PYTHON"] == "/p/python3" and described["PEGASUS_METRICS"] == "false"
    assert Path(sub["executable"]).parent == Path(sys.executable).parent or sub["executable"] == sys.executable


def test_pegasus_python_is_the_first_that_passes_the_planners_preflight(tmp_path):
    """The planner stand-in runs Pegasus' own preflight rule: its Python must import yaml and git."""
    no_git = _bin_with(tmp_path, "nogit", {"python3": f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n"})
    with_git = _bin_with(tmp_path, "withgit", {"python3": f"#!/bin/sh\nexec {sys.executable} \"$@\"\n"})
    plan = _bin_with(tmp_path, "pegasus", {"pegasus-plan": '#!/bin/sh\nexec "$PEGASUS_PYTHON" -c "import yaml, git; print(\'5.1.2\')"\n'})
    env = {"PATH": os.pathsep.join([str(plan), str(no_git), str(with_git), "/usr/bin", "/bin"])}  # GitPython needs git
    # which python3 finds the one without git first, as Pegasus' wrapper would: it is skipped, /usr/bin/python3 next.
    found = crondor_submit.pegasus_python(env)
    assert found != str(no_git / "python3")
    assert found in (None, crondor_submit.SYSTEM_PYTHON)
    env = {"PATH": os.pathsep.join([str(plan), str(with_git), str(no_git), "/usr/bin", "/bin"])}
    assert crondor_submit.pegasus_python(env) == str(with_git / "python3")
    assert crondor_submit.pegasus_python({"PATH": str(with_git)}) is None, "no pegasus-plan: nothing to look for"


# ---------------------------------------------------------------------------------------------------------------
# The check before any claim (engines/pegasus/condor.py, called by pipeline.scan)


def _scan_args(tmp_path: Path) -> list[str]:
    root = tmp_path / "buckets"
    (root / "cog-in").mkdir(parents=True)
    (root / "cog-out").mkdir()
    (root / "cog-in" / "a_raw.csv").write_text("a.tif,1\n")
    return ["scan", "--engine", "pegasus", "--input-bucket", "cog-in", "--output-bucket", "cog-out", "--local-root", str(root), "-w", str(tmp_path / "work"), "--quiet"]


def _nothing_claimed(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "buckets" / "cog-in").iterdir()) == ["a_raw.csv"]
    assert not list((tmp_path / "work").glob("workflow-run-*"))


@pytest.mark.parametrize("tools, named", [
    ({}, "pegasus-plan and condor_submit_dag not found on PATH"),
    ({"pegasus-plan": "#!/bin/sh\necho 5.1.2\n"}, "condor_submit_dag not found on PATH"),
    ({"pegasus-plan": "#!/bin/sh\necho 'Pegasus requires the Python3 GitPython module to be installed' >&2\n"
                      "echo 'Please install it via your OS package manager' >&2\nexit 1\n", "condor_submit_dag": "#!/bin/sh\n"},
     "--version exited 1: Pegasus requires the Python3 GitPython module to be installed (Pegasus' Python: the first python3 on PATH)"),
    ({"pegasus-plan": "not a program\n", "condor_submit_dag": "#!/bin/sh\n"}, "--version cannot start: Exec format error"),
])
def test_scan_with_pegasus_claims_nothing_when_pegasus_cannot_run(tmp_path, monkeypatch, tools, named):
    folder = _bin_with(tmp_path, "bin", tools)
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("PEGASUS_PYTHON", raising=False)
    result = CliRunner().invoke(cli, _scan_args(tmp_path))
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: Pegasus cannot run here:") and named in line and "nothing was claimed" in line, line
    assert "--engine local" in line and "Traceback" not in result.output
    _nothing_claimed(tmp_path)


def test_a_planner_that_does_not_answer_is_a_reason_too(tmp_path, monkeypatch):
    folder = _bin_with(tmp_path, "bin", {"pegasus-plan": "#!/bin/sh\nexec sleep 30\n", "condor_submit_dag": "#!/bin/sh\n"})
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(condor, "PEGASUS_CHECK_TIMEOUT_S", 1)
    result = CliRunner().invoke(cli, _scan_args(tmp_path))
    assert result.exit_code == 1 and "--version did not answer within 1 s" in result.output
    _nothing_claimed(tmp_path)


def test_no_submit_needs_the_planner_too_and_dry_run_checks_nothing(tmp_path, monkeypatch):
    folder = _bin_with(tmp_path, "bin", {"pegasus-plan": "#!/bin/sh\necho 5.1.2\n"})
    monkeypatch.setenv("PATH", str(folder))
    # pegasus-plan runs `condor_submit_dag -no_submit` even when it does not submit.
    args = _scan_args(tmp_path)
    result = CliRunner().invoke(cli, [*args, "--no-submit"])
    assert result.exit_code == 1 and "condor_submit_dag not found on PATH" in result.output
    _nothing_claimed(tmp_path)
    result = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert result.exit_code == 0 and "would claim a_raw.csv" in result.output


# ---------------------------------------------------------------------------------------------------------------
# crondor status: waiting or running, and the last tick (the real JobEventLog reading a real event log)

HOST = "<127.0.0.1:9618?addrs=127.0.0.1-9618&alias=ap&noUDP&sock=schedd_1_2>"


def _event(number: int, cluster: int, when: str, body: str) -> str:
    return f"{number:03d} ({cluster}.000.000) {when} {body}\n...\n"


def execute_event(cluster: int, when: str) -> str:
    return _event(1, cluster, when, f"Job executing on host: {HOST}")


def requeue_event(cluster: int, when: str, ending: str = "(1) Normal termination (return value 1)") -> str:
    """How the local universe's starter logs the end of a tick of a job that stays queued (on_exit_remove = false),
    as HTCondor 25.13 wrote it into a real Crondor's crondor.log."""
    return _event(4, cluster, when, "Job was evicted.\n\t(0) Job terminated and was requeued\n"
                  "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Local Usage\n"
                  f"\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n\t{ending}\n"
                  "\tThe job attribute OnExitRemove expression 'false' evaluated to FALSE")


def test_status_tells_waiting_from_running_and_shows_the_last_tick(tmp_path, schedd, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    work = tmp_path / "work"
    assert CliRunner().invoke(cli, start_args(work, "--schedule", "*/1 * * * *")).exit_code == 0
    (job,) = schedd.jobs
    log = work / "crondor.log"
    assert job["UserLog"] == str(log)

    def status() -> list[str]:
        result = CliRunner().invoke(cli, ["crondor", "status"])
        assert result.exit_code == 0, result.output
        return result.output.splitlines()

    job["DeferralTime"] = int(time.mktime(time.strptime("2026-12-07 18:15:00", "%Y-%m-%d %H:%M:%S")))
    lines = status()
    assert "  state: waiting for its next tick at 2026-12-07 18:15:00; schedule: */1 * * * *; ticks so far: 0" in lines
    assert "  last tick: none has ended yet" in lines
    # The schedd has started the job for its deferral: JobStatus 2, but no tick process runs yet.
    job["JobStatus"] = 2
    log.write_text(_event(0, job["ClusterId"], "2026-12-07 18:00:00", f"Job submitted from host: {HOST}"))
    assert "  state: waiting for its next tick at 2026-12-07 18:15:00 (its slot is ready); schedule: */1 * * * *; ticks so far: 0" in status()
    with open(log, "a") as fh:
        fh.write(execute_event(job["ClusterId"], "2026-12-07 18:15:00"))
    assert any(line.startswith("  state: running a tick since 2026-12-07 18:15:00;") and "ticks so far: 1" in line for line in status())
    with open(log, "a") as fh:
        fh.write(requeue_event(job["ClusterId"], "2026-12-07 18:15:12"))
        fh.write(execute_event(999, "2026-12-07 18:15:30"))  # another job writing to the same log is not this one
    job["JobStatus"], job["DeferralTime"] = 1, job["DeferralTime"] + 60
    lines = status()
    assert "  state: waiting for its next tick at 2026-12-07 18:16:00; schedule: */1 * * * *; ticks so far: 1" in lines
    assert f"  last tick: ended 2026-12-07 18:15:12, exit code 1, took 12 s (its output: {work}/crondor.out, crondor.err)" in lines
    with open(log, "a") as fh:
        fh.write(execute_event(job["ClusterId"], "2026-12-07 18:16:00"))
        fh.write(requeue_event(job["ClusterId"], "2026-12-07 18:16:03", "(0) Abnormal termination (signal 9)\n\t(0) No core file"))
        fh.write(execute_event(job["ClusterId"], "2026-12-07 18:17:00"))
        fh.write(_event(12, job["ClusterId"], "2026-12-07 18:17:05", "Job was held.\n\tcondor_hold by operator\n\tCode 1 Subcode 0"))
    job["JobStatus"], job["HoldReason"] = 5, "condor_hold by operator"
    lines = status()
    assert f"  state: held: condor_hold by operator (condor_release {job['ClusterId']}.0); schedule: */1 * * * *; ticks so far: 3" in lines
    assert any(line.startswith("  last tick: ended 2026-12-07 18:17:05, held: condor_hold by operator, took 5 s") for line in lines)
    log.write_text(log.read_text().rsplit("012 (", 1)[0])
    assert any(line.startswith("  last tick: ended 2026-12-07 18:16:03, killed by signal 9, took 3 s") for line in status())
    # A log that cannot be read: said, and the rest of the status still shows.
    log.unlink()
    log.mkdir()
    lines = status()
    assert any(line.startswith(f"  last tick: unknown (cannot read {log}:") for line in lines)
    assert any(line.startswith("runs in flight under") for line in lines)


def test_a_tick_removed_or_evicted_says_so(tmp_path):
    from cog_pipeline.crondor.events import read_ticks

    log = tmp_path / "crondor.log"
    evicted = _event(4, 7, "2026-12-07 18:15:09", "Job was evicted.\n\t(0) CPU times\n\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n"
                     "\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job")
    log.write_text(execute_event(7, "2026-12-07 18:15:00") + evicted)
    ticks = read_ticks(log, 7)
    assert (ticks.outcome, ticks.exit_code, ticks.seconds, ticks.running, ticks.count) == ("evicted before it ended", None, 9, False, 1)
    log.write_text(execute_event(7, "2026-12-07 18:15:00") + _event(9, 7, "2026-12-07 18:15:04", "Job was aborted.\n\tcog-pipeline crondor stop"))
    assert read_ticks(log, 7).outcome == "removed"
    # Removed between ticks: the last tick's outcome stands.
    log.write_text(execute_event(7, "2026-12-07 18:15:00") + requeue_event(7, "2026-12-07 18:15:02", "(1) Normal termination (return value 0)")
                   + _event(9, 7, "2026-12-07 18:20:00", "Job was aborted.\n\tcog-pipeline crondor stop"))
    ticks = read_ticks(log, 7)
    assert (ticks.outcome, ticks.exit_code, ticks.count) == ("exit code 0", 0, 1)
    assert read_ticks(tmp_path / "not-yet.log", 7).count == 0


# ---------------------------------------------------------------------------------------------------------------
# stop says what happens to the runs in flight; status shows held jobs


def test_stop_says_what_happens_to_runs_in_flight(tmp_path, schedd):
    work = tmp_path / "work"
    assert CliRunner().invoke(cli, start_args(work)).exit_code == 0
    _run_dir(work, "20240102-030405", RUNNING, submit_dir=str(work / "s"), dagman_cluster=555)
    _run_dir(work, "20240102-040506", "reconciled")
    result = CliRunner().invoke(cli, ["crondor", "stop", "--input-bucket", "cog-in", "--output-bucket", "cog-out"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "removed Crondor job 101.0" in text and f"1 run(s) in flight under {work}" in text
    assert "pegasus-monitord runs its END hook (cog-pipeline finish RUN_DIR)" in text
    assert f"waits for the next scan you run: cog-pipeline scan --engine pegasus -w {work}" in text
    assert "still reconcile" not in text


def test_status_shows_each_runs_held_jobs_with_their_reason(tmp_path, schedd, monkeypatch):
    monkeypatch.setenv("PATH", str(_bin_with(tmp_path, "emptybin", {})))
    work = tmp_path / "work"
    for ts, cluster in (("20240102-030405", 555), ("20240102-040506", 777)):
        submit_dir = work / f"workflow-run-{ts}" / "submit" / "run0001"
        _run_dir(work, ts, RUNNING, submit_dir=str(submit_dir), dagman_cluster=cluster)
        submit_dir.mkdir(parents=True)
    schedd.jobs += [
        {"ClusterId": 555, "ProcId": 0, "JobStatus": 2, "JobUniverse": 7},
        {"ClusterId": 556, "ProcId": 0, "JobStatus": 5, "DAGManJobId": 555, "DAGNodeName": "generate_cog_ID0000003",
         "HoldReason": "Error from slot1@ep: Job has gone over memory limit of 1024 megabytes."},
        {"ClusterId": 557, "ProcId": 0, "JobStatus": 2, "DAGManJobId": 555, "DAGNodeName": "generate_cog_ID0000004"},
        {"ClusterId": 777, "ProcId": 0, "JobStatus": 5, "JobUniverse": 7, "HoldReason": "DAGMan held by operator"},
        {"ClusterId": 900, "ProcId": 0, "JobStatus": 5, "DAGManJobId": 899, "DAGNodeName": "other", "HoldReason": "not ours"},
    ]
    result = CliRunner().invoke(cli, ["status", "-w", str(work)])
    assert result.exit_code == 0, result.output
    held = [line.strip() for line in result.output.splitlines() if line.strip().startswith("held:")]
    assert held == [
        "held: 556.0 generate_cog_ID0000003: Error from slot1@ep: Job has gone over memory limit of 1024 megabytes. (condor_release 556.0)",
        "held: 777.0 DAGMan: DAGMan held by operator (condor_release 777.0)",
    ]
    before = result.output.index("workflow-run-20240102-040506  ")
    assert result.output.index("held: 556.0") < before < result.output.index("held: 777.0"), "each under its own run"


def test_status_without_a_schedd_says_held_jobs_are_unknown(tmp_path, monkeypatch):
    def unreachable():
        raise htcondor2.HTCondorException("Unable to locate local daemon.")

    monkeypatch.setattr(condor, "schedd", unreachable)
    work = tmp_path / "work"
    _run_dir(work, "20240102-030405", RUNNING, submit_dir=str(work / "nowhere"), dagman_cluster=555)
    result = CliRunner().invoke(cli, ["status", "-w", str(work)])
    assert result.exit_code == 0, result.output
    assert "held jobs: unknown (the schedd cannot be asked: Unable to locate local daemon.)" in result.output


# ---------------------------------------------------------------------------------------------------------------
# The real Pegasus 5.1.2 planner (skipped where it is not installed)

PEGASUS_BIN = Path("/opt/pegasus/bin")


@pytest.fixture()
def real_pegasus() -> dict[str, str]:
    if not (PEGASUS_BIN / "pegasus-plan").is_file():
        pytest.skip("no Pegasus installation at /opt/pegasus")
    env = {"PATH": os.pathsep.join([str(PEGASUS_BIN), "/usr/bin", "/bin"]), "HOME": os.environ.get("HOME", "/tmp")}
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    return env


def test_the_real_planner_refuses_a_python_without_pegasus_modules(real_pegasus, tmp_path):
    """The issue's failure: the tick's Python lacks GitPython, so every pegasus-plan failed. Now it is one line."""
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)  # like a '[condor]' venv
    problem = condor.planner_problem({**real_pegasus, "PEGASUS_PYTHON": str(bare / "bin" / "python3")})
    assert problem is not None and "--version exited 1: Pegasus requires the Python3" in problem, problem
    assert f"(Pegasus' Python: {bare / 'bin' / 'python3'})" in problem
    # start never records a Python that fails the planner's preflight, even the first python3 on PATH.
    env = crondor_submit.tick_environment({**real_pegasus, "PATH": os.pathsep.join([str(bare / "bin"), real_pegasus["PATH"]])})
    assert str(bare / "bin") in env["PATH"] and env.get("PEGASUS_PYTHON") != str(bare / "bin" / "python3")


def test_start_finds_the_pegasus_installations_python(real_pegasus):
    pegasus_venv = Path("/opt/pegasus/python-venv/bin")
    if not (pegasus_venv / "python3").is_file():
        pytest.skip("this Pegasus has no python-venv of its own")
    venv_bin = str(Path(sys.executable).parent)
    source = {**real_pegasus, "PATH": os.pathsep.join([venv_bin, str(PEGASUS_BIN), str(pegasus_venv), "/usr/bin", "/bin"])}
    env = crondor_submit.tick_environment(source)
    assert env["PEGASUS_PYTHON"] == str(pegasus_venv / "python3")
    assert venv_bin not in env["PATH"].split(os.pathsep)
    assert condor.planner_problem(env) is None


def test_stac_and_an_aws_profile_reach_every_tick(tmp_path, monkeypatch):
    """`crondor start --stac --stac-base-url URL --profile NAME`: the tick's arguments carry them (the profile's
    name only), and the scan accepts that command line."""
    monkeypatch.setattr(condor, "schedd", lambda: pytest.fail("dry run must not contact the schedd"))
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--stac", "--stac-base-url", "https://cogs.example.org/",
                                                "--profile", "ops", "--dry-run"))
    assert result.exit_code == 0, result.output
    sub = build_submit(CrondorSpec("cog-in", "cog-out", work, settings={"publish.stac": True, "publish.stac_base_url": "https://cogs.example.org/"}, aws_profile="ops"))
    argv = condor_argv(sub["arguments"])
    assert argv[argv.index("--stac-base-url") + 1] == "https://cogs.example.org/" and "--stac" in argv
    assert argv[argv.index("--profile") + 1] == "ops"
    text = (work / "crondor.sub").read_text()
    assert "--stac-base-url https://cogs.example.org/" in text and "--profile ops" in text
    bad = CliRunner().invoke(cli, start_args(work, "--stac-base-url", "https://cogs.example.org/", "--dry-run"))
    assert bad.exit_code == 2 and "needs --stac" in bad.output


def test_the_schedule_comes_from_the_profile_unless_given(tmp_path, monkeypatch):
    monkeypatch.setattr(condor, "schedd", lambda: pytest.fail("dry run must not contact the schedd"))
    profile = tmp_path / "cog.toml"
    profile.write_text('[crondor]\nschedule = "5 */2 * * *"\n')
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, start_args(work, "--config", str(profile), "--dry-run"))
    assert result.exit_code == 0, result.output
    text = (work / "crondor.sub").read_text()
    assert "cron_minute       = 5" in text and "cron_hour         = */2" in text
    result = CliRunner().invoke(cli, start_args(work, "--config", str(profile), "--schedule", "*/1 * * * *", "--dry-run"))
    assert result.exit_code == 0 and "cron_minute       = */1" in (work / "crondor.sub").read_text()
    profile.write_text('[crondor]\nschedule = "every day"\n')
    bad = CliRunner().invoke(cli, start_args(work, "--config", str(profile), "--dry-run"))
    assert bad.exit_code == 2 and "schedule" in bad.output
