"""The Crondor on a real HTCondor pool with a real Pegasus (issue 23): it fires on its schedule, `crondor status`
tells waiting from running and shows the last tick, and `crondor stop` removes it.

Needs the real tools on PATH (a running pool: `condor_status` answers; Pegasus 5.1's `pegasus-plan`) and a
cog-pipeline installation the submitting user can run, made as the README tells operators, with only the
`[condor]` extra (COG_PRODUCTION_VENV: a venv made with `pip install -e '.[condor]'`). HTCondor refuses jobs from
root, so when the tests run as root every command runs as COG_PRODUCTION_USER (README, "Production tests"). The bucket is a folder with
no manifest: a tick claims nothing, which is enough to see it fire (one manifest end to end is main's
production suite, issue 18).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import htcondor2
import pytest

from cog_pipeline.crondor.commands import find_crondors, phase_lines
from cog_pipeline.crondor.submit import classad_string, crondor_key
from cog_pipeline.engines.pegasus import condor

pytestmark = pytest.mark.production

VENV = Path(os.environ.get("COG_PRODUCTION_VENV", "/nonexistent"))
USER = os.environ.get("COG_PRODUCTION_USER", "") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
FIRE_WITHIN_S = 150  # "*/1": the next minute, plus the schedd's cron and deferral bookkeeping


def _as_user() -> dict:
    return {"user": USER} if os.geteuid() == 0 else {}


def operator_env() -> dict[str, str]:
    """The operator's shell: the tools' PATH and settings as this process has them, and the project's venv
    activated (first on PATH)."""
    home = pwd.getpwnam(USER).pw_dir
    env = {"HOME": home, "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in ("PATH", "CONDOR_CONFIG", "PEGASUS_PYTHON", "PEGASUS_METRICS", "JAVA_HOME") if k in os.environ})
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def cog(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "bin" / "cog-pipeline"), *args], env=env, cwd="/", capture_output=True, text=True,
                          timeout=timeout, check=False, **_as_user())


@pytest.fixture(scope="module")
def pool() -> dict[str, str]:
    missing = [tool for tool in ("condor_status", "condor_submit", "pegasus-plan") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the real HTCondor/Pegasus tools are not on PATH ({', '.join(missing)} missing; see README, Production tests)")
    if not USER:
        pytest.skip("running as root, and HTCondor refuses jobs submitted by root: set COG_PRODUCTION_USER")
    if not (VENV / "bin" / "cog-pipeline").is_file():
        pytest.skip("COG_PRODUCTION_VENV does not name a venv with cog-pipeline[condor] installed (README, Production tests)")
    env = operator_env()
    try:
        answer = subprocess.run(["condor_status", "-schedd", "-af", "Name"], env=env, cwd="/", capture_output=True, text=True, timeout=30, **_as_user())
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the HTCondor pool does not answer: {exc}")
    if answer.returncode != 0 or not answer.stdout.strip():
        pytest.skip(f"the HTCondor pool does not answer: {answer.stderr.strip() or 'no schedd'}")
    return env


@pytest.fixture()
def place():
    """A work directory and folder buckets the submitting user owns, in its home (DAGMan refuses node logs in /tmp);
    removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="cog-crondor-real-", dir=pwd.getpwnam(USER).pw_dir))
    for sub in ("work", "buckets/cog-in", "buckets/cog-out"):
        (top / sub).mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (top, *top.rglob("*")):
            shutil.chown(path, USER, USER)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture()
def pool_bindings(pool):
    """This process's HTCondor bindings pointed at the pool, and back afterwards (other tests must not see it)."""
    old = os.environ.get("CONDOR_CONFIG")
    os.environ["CONDOR_CONFIG"] = pool["CONDOR_CONFIG"]
    htcondor2.reload_config()
    yield
    if old is None:
        os.environ.pop("CONDOR_CONFIG", None)
    else:
        os.environ["CONDOR_CONFIG"] = old
    htcondor2.reload_config()


def watch_first_tick(key: str) -> tuple[list[str], str]:
    """The phases `crondor status` goes through until the first tick has ended, and its last-tick line."""
    seen: list[str] = []
    deadline = time.monotonic() + FIRE_WITHIN_S
    while time.monotonic() < deadline:
        (ad,) = find_crondors(condor.schedd(), key)
        state, last = phase_lines(ad)
        phase = "running" if "running a tick since" in state else "waiting" if "waiting for its next tick" in state else state
        if not seen or seen[-1] != phase:
            seen.append(phase)
        if last.startswith("  last tick: ended ") and phase != "running":
            return seen, last
        time.sleep(0.2)
    pytest.fail(f"no tick ended within {FIRE_WITHIN_S} s; phases seen {seen}")


def wait_gone(constraint: str) -> None:
    """A removed job writes its last events as it leaves the queue: let it go before its folder is removed."""
    deadline = time.monotonic() + 60
    while condor.schedd().query(constraint, ["ClusterId"]) and time.monotonic() < deadline:
        time.sleep(0.5)


def _status_phase(env: dict[str, str]) -> str:
    result = cog(env, "crondor", "status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_real_crondor_fires_on_its_schedule_and_stop_removes_it(pool, place, pool_bindings):
    env = pool
    work, root = place / "work", place / "buckets"
    ident = ["--input-bucket", "cog-in", "--output-bucket", "cog-out", "-p", f"{place.name}*raw.csv"]
    key = crondor_key("cog-in", "cog-out", f"{place.name}*raw.csv")
    start = cog(env, "crondor", "start", *ident, "--local-root", str(root), "-w", str(work), "--schedule", "*/1 * * * *")
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert "schedule '*/1 * * * *'" in start.stdout and "warning" not in start.stderr, start.stderr
        # The description: cron every minute, Pegasus' own Python, metrics off as the operator set them, no venv on PATH.
        text = (work / "crondor.sub").read_text()
        assert "cron_minute       = */1" in text
        assert f"PEGASUS_PYTHON={env['PEGASUS_PYTHON']}" in text and "PEGASUS_METRICS=false" in text
        assert str(VENV / "bin") + os.pathsep not in text.split("PATH=", 1)[1].split()[0]
        assert f"executable        = {VENV / 'bin' / 'cog-pipeline'}" in text

        # Watch the phases closely in this process (a manifest-less tick lasts a few seconds), then as the operator.
        seen, last = watch_first_tick(key)
        assert seen[:3] == ["waiting", "running", "waiting"], seen
        shown = _status_phase(env).split(f"[{key}]", 1)[1]
        assert last in shown.splitlines() and "  state: waiting for its next tick at " in shown, shown
        assert "exit code 0" in last, f"{last}\ncrondor.err: {(work / 'crondor.err').read_text(errors='replace')}"
        # A manifest-less tick claimed nothing, and said nothing is wrong with Pegasus.
        assert "Pegasus cannot run" not in (work / "crondor.err").read_text(errors="replace")
        print(f"phases seen: {seen}; {last.strip()}")
    finally:
        stop = cog(env, "crondor", "stop", *ident)
        wait_gone(f"CogPipelineKey == {classad_string(key)}")
    assert stop.returncode == 0, stop.stderr
    assert "removed Crondor job" in stop.stdout and "0 run(s) in flight" in stop.stdout
    assert f"[{key}]" not in _status_phase(env)


def test_a_tick_whose_pegasus_cannot_run_claims_nothing(pool, place, pool_bindings):
    """The issue's failure: Pegasus' tools ran with the project venv's Python (no GitPython), and every plan
    failed after the manifest was claimed. Now the tick says so in one line before any claim."""
    env = {**pool, "PEGASUS_PYTHON": str(VENV / "bin" / "python3")}  # a '[condor]' venv: no GitPython
    work, root = place / "work", place / "buckets"
    (root / "cog-in" / f"{place.name}_raw.csv").write_text("a.tif,1\n")
    if os.geteuid() == 0:
        shutil.chown(root / "cog-in" / f"{place.name}_raw.csv", USER, USER)
    ident = ["--input-bucket", "cog-in", "--output-bucket", "cog-out", "-p", f"{place.name}*raw.csv"]
    key = crondor_key("cog-in", "cog-out", f"{place.name}*raw.csv")
    start = cog(env, "crondor", "start", *ident, "--local-root", str(root), "-w", str(work), "--schedule", "*/1 * * * *")
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert "warning: Pegasus cannot run in the tick's environment" in start.stderr and "GitPython" in start.stderr
        _, last = watch_first_tick(key)
        assert "exit code 1" in last, last
        (line,) = [line for line in (work / "crondor.err").read_text(errors="replace").splitlines() if line.strip()]
        assert line.startswith("error: Pegasus cannot run here:") and "GitPython" in line and "nothing was claimed" in line, line
        assert sorted(p.name for p in (root / "cog-in").iterdir()) == [f"{place.name}_raw.csv"]
        assert not list(work.glob("workflow-run-*"))
    finally:
        stop = cog(env, "crondor", "stop", *ident)
        wait_gone(f"CogPipelineKey == {classad_string(key)}")
    assert stop.returncode == 0 and "removed Crondor job" in stop.stdout, stop.stderr


def test_status_shows_a_real_dags_held_job_with_its_reason(pool, place, pool_bindings):
    """held_jobs asks the real schedd for jobs whose DAGManJobId is a run's DAGMan job (one node submitted on hold)."""
    from cog_pipeline.run.rundir import RUNNING, PegasusRecord, RunDir, RunInfo

    dag_dir = place / "dag"
    dag_dir.mkdir()
    (dag_dir / "one.sub").write_text("universe = vanilla\nexecutable = /bin/true\nlog = one.log\nhold = true\nqueue\n")
    (dag_dir / "x.dag").write_text("JOB one_node one.sub\n")
    run = RunDir(place / "work" / "workflow-run-20261207-000000")
    run.path.mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (place, *place.rglob("*")):
            shutil.chown(path, USER, USER)
    submitted = subprocess.run(["condor_submit_dag", "x.dag"], env=pool, cwd=dag_dir, capture_output=True, text=True, timeout=60, **_as_user())
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    cluster = int(submitted.stdout.split("submitted to cluster ")[1].split(".")[0])
    try:
        held: list = []
        deadline = time.monotonic() + 90
        while not held and time.monotonic() < deadline:
            time.sleep(1)
            held = condor.held_jobs({run.path.name: cluster})[run.path.name]
        assert len(held) == 1 and held[0]["node"] == "one_node" and "hold" in held[0]["reason"].lower(), held
        run.save(RunInfo(timestamp="20261207-000000", input_bucket="cog-in", output_bucket="cog-out", manifest_key="m_raw.csv",
                         processing_key="m_processing-20261207-000000.csv", store={}, state=RUNNING, engine="pegasus",
                         pegasus=PegasusRecord(submit_dir=str(dag_dir), dagman_cluster=cluster)))
        if os.geteuid() == 0:
            shutil.chown(run.file("run.json"), USER, USER)
        shown = cog(pool, "status", "-w", str(place / "work"))
        assert shown.returncode == 0, shown.stderr
        assert f"    held: {held[0]['id']} one_node: {held[0]['reason']} (condor_release {held[0]['id']})" in shown.stdout, shown.stdout
    finally:
        subprocess.run(["condor_rm", str(cluster)], env=pool, cwd="/", capture_output=True, timeout=60, **_as_user())
        wait_gone(f"ClusterId == {cluster} || DAGManJobId == {cluster}")
