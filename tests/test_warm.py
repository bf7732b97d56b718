"""The warm converter (transformations/warm.py, warm_server.py): real zipapp processes, real sockets, real GDAL.

Each test runs the freshly built executable in its own directory with COG_PIPELINE_WARM_TRACE, the JSON lines
both sides append: which server served which client, the client's loaded modules, how the server ended."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from cog_pipeline.transformations.exit_codes import ExitCode
from cog_pipeline.transformations.warm import idle_seconds, warm_enabled
from tests import rasters
from tests.convert_support import EXECUTABLE, SYSTEM_PYTHON, needs_osgeo

PYTHONS = [
    pytest.param(sys.executable, id="venv"),
    pytest.param(SYSTEM_PYTHON, id="system", marks=needs_osgeo),
]


#: Variables importing rasterio sets in this (pytest) process; a job's environment does not have them.
_SET_BY_RASTERIO_IMPORT = ("GDAL_CURL_CA_BUNDLE", "PROJ_CURL_CA_BUNDLE")


class Job:
    """One job working directory: runs generate_cog there and reads the trace."""

    def __init__(self, path: Path, python: str):
        self.path, self.python = path, python
        self.trace_file = path / "trace.jsonl"

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COG_PIPELINE_", "_CONDOR_"))}
        for var in _SET_BY_RASTERIO_IMPORT:  # as a job starts: without what importing rasterio here added
            env.pop(var, None)
        env.update(COG_PIPELINE_WARM="1", COG_PIPELINE_WARM_TRACE=str(self.trace_file), COG_PIPELINE_WARM_IDLE="15")
        env.update(extra)
        return env

    def popen(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([self.python, str(EXECUTABLE), *args], cwd=self.path, env=self.env(**env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_no_core_dumps)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        proc = self.popen(*args, **env)
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def events(self, **match: object) -> list[dict]:
        if not self.trace_file.exists():
            return []
        lines = [json.loads(line) for line in self.trace_file.read_text().splitlines()]
        return [e for e in lines if all(e.get(k) == v for k, v in match.items())]

    def clients(self) -> list[dict]:
        return [e for e in self.events(role="client") if "served_by" in e]

    def servers(self) -> list[int]:
        return [e["pid"] for e in self.events(role="server", event="ready")]

    def wait_event(self, timeout: float = 60, **match: object) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(**match)
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no trace event {match} in {timeout} s: {self.events()}")


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(params=PYTHONS)
def job(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Job]:
    """A job directory; every server the test started is killed at the end (by its pid, from the trace)."""
    work = tmp_path / "job"
    work.mkdir()
    j = Job(work, request.param)
    yield j
    for pid in j.servers():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def small_input(job: Job, name: str = "in.tif", bands: int = 3) -> str:
    rasters.write(job.path / name, rasters.textured(bands, 96, 130))
    return name


# ---------------------------------------------------------------- served, and the same as converting here


def test_second_invocation_is_served_by_the_warm_server_and_client_loads_no_gdal(job: Job) -> None:
    src = small_input(job)
    first = job.run(src, "a.tif", "a.jpg", "--bands", "3")
    second = job.run(src, "b.tif", "b.jpg", "--bands", "3")
    assert (first.returncode, second.returncode) == (0, 0), (first.stderr, second.stderr)
    (server,) = job.servers()
    clients = job.clients()
    assert [c["served_by"] for c in clients] == [server, server]
    assert server not in [c["pid"] for c in clients]
    assert all(c["heavy"] == [] for c in clients)  # no numpy, osgeo, rasterio or PIL in the clients
    maps = Path(f"/proc/{server}/maps").read_text()
    assert "libgdal" in maps  # the server holds GDAL loaded for the next image
    assert (job.path / "b.tif").stat().st_size > 0 and (job.path / "b.jpg").stat().st_size > 0


def test_served_outputs_and_streams_are_identical_to_converting_in_process(job: Job) -> None:
    src = small_input(job, bands=4)
    warm = [job.run(src, f"w{i}.tif", f"w{i}.jpg", "--bands", "4") for i in range(2)][1]
    cold = job.run(src, "c.tif", "c.jpg", "--bands", "4", COG_PIPELINE_WARM="0")
    assert job.clients()[-1]["served_by"] in job.servers()  # the second warm run was served
    assert len(job.clients()) == 2  # and the cold one never asked
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr) == (0, b"", b"")
    for ext in ("tif", "jpg"):
        assert (job.path / f"w1.{ext}").read_bytes() == (job.path / f"c.{ext}").read_bytes()


def test_odd_file_names_and_environment_reach_the_child_unchanged(job: Job) -> None:
    """Keys are user data: spaces, quotes, #, ?, %20, non-ASCII; the environment may hold non-UTF-8 bytes."""
    src = "Eau Claire #1 'a%20b'? ü.tif"
    rasters.write(job.path / src, rasters.textured(3, 60, 70))
    out = "out dir/olé #2 \"q\""
    args = [src, f"{out}.tif", f"{out}.jpg", "--bands", "4"]
    env = {"COG_PIPELINE_BAND_MISMATCH": "warn", "ODD_VALUE": os.fsdecode(b"caf\xe9 = '#?'")}
    job.run(small_input(job), "warmup.tif", "warmup.jpg")
    warm = job.run(*args, **env)
    assert job.clients()[-1]["served_by"] in job.servers()
    tif, jpg = (job.path / f"{out}.tif").read_bytes(), (job.path / f"{out}.jpg").read_bytes()
    cold = job.run(*args, COG_PIPELINE_WARM="0", **env)
    assert (warm.returncode, warm.stderr) == (cold.returncode, cold.stderr)
    assert warm.returncode == 0 and warm.stderr.startswith(b"WARNING BAND_MISMATCH")  # the env var arrived
    assert (job.path / f"{out}.tif").read_bytes() == tif and (job.path / f"{out}.jpg").read_bytes() == jpg


def test_a_name_that_is_not_utf8_fails_the_same_way_served_or_not(job: Job) -> None:
    src = os.fsdecode(b"a\xff.tif")
    os.replace(rasters.write(job.path / "plain.tif", rasters.textured(1, 30, 30)), job.path / src)
    job.run(small_input(job), "warmup.tif", "warmup.jpg")
    warm = job.run(src, "o.tif", "o.jpg")
    cold = job.run(src, "o.tif", "o.jpg", COG_PIPELINE_WARM="0")
    assert job.clients()[-1]["served_by"] in job.servers()
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)


def test_verbose_summary_and_warnings_are_relayed(job: Job) -> None:
    src = small_input(job)
    job.run(src, "a.tif", "a.jpg")
    warm = job.run(src, "b.tif", "b.jpg", "--bands", "2", "-v", COG_PIPELINE_BAND_MISMATCH="warn")
    cold = job.run(src, "c.tif", "c.jpg", "--bands", "2", "-v", COG_PIPELINE_BAND_MISMATCH="warn", COG_PIPELINE_WARM="0")
    assert job.clients()[-1]["served_by"] in job.servers()
    assert warm.returncode == cold.returncode == 0
    assert warm.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1]
    assert warm.stderr.splitlines()[-1].startswith(b"WARNING BAND_MISMATCH: ")
    # the summary names the outputs and ends in timings, which differ from run to run
    assert warm.stdout.split(b"inspect")[0].replace(b"b.", b"c.") == cold.stdout.split(b"inspect")[0]


def test_parallel_invocations_are_served_in_parallel(job: Job) -> None:
    """One server, two requests in flight at once: tasks that pegasus-cluster -n runs side by side stay so."""
    job.run(small_input(job), "warmup.tif", "warmup.jpg")
    os.mkfifo(job.path / "f1.tif")
    os.mkfifo(job.path / "f2.tif")
    clients = [job.popen(f"f{i}.tif", f"o{i}.tif", f"o{i}.jpg") for i in (1, 2)]
    deadline = time.monotonic() + 60
    while len(job.events(event="forked")) < 3:  # warm-up, then both blocked children at the same time
        assert time.monotonic() < deadline, job.events()
        time.sleep(0.02)
    for i in (1, 2):
        (job.path / f"f{i}.tif").write_bytes(b"not a tiff")
    for client in clients:
        _, err = client.communicate(timeout=60)
        assert client.returncode == ExitCode.INPUT_UNREADABLE, err
    assert [c["served_by"] for c in job.clients()[1:]] == [job.servers()[0]] * 2


def _corrupt(job: Job) -> str:
    good = (job.path / small_input(job, "good.tif")).read_bytes()
    (job.path / "bad.tif").write_bytes(good[: len(good) // 2])  # truncated: image data past the end
    return "bad.tif"


@pytest.mark.parametrize(
    "case,code",
    [("corrupt", ExitCode.INPUT_UNREADABLE), ("bands", ExitCode.BAND_MISMATCH), ("usage", ExitCode.USAGE)],
)
def test_failures_exit_and_report_exactly_as_in_process(job: Job, case: str, code: ExitCode) -> None:
    src = _corrupt(job) if case == "corrupt" else small_input(job)
    args = {"corrupt": [src, "o.tif", "o.jpg"], "bands": [src, "o.tif", "o.jpg", "--bands", "2"],
            "usage": [src, "o.tif", "o.jpg", "--bands", "zero"]}[case]
    warm = job.run(*args)
    cold = job.run(*args, COG_PIPELINE_WARM="0")
    assert job.clients()[0]["served_by"] in job.servers()
    assert warm.returncode == cold.returncode == code
    assert warm.stderr == cold.stderr and warm.stderr.decode().startswith(code.name)
    assert warm.stdout == cold.stdout == b""


# ---------------------------------------------------------------- crashes, dead servers, fallbacks


def _blocked_on_fifo(job: Job) -> tuple[subprocess.Popen, int]:
    """A served request whose child is blocked opening its input (a FIFO nobody writes): (client, child pid)."""
    job.run(small_input(job), "warmup.tif", "warmup.jpg")  # the server is up
    os.mkfifo(job.path / "fifo.tif")
    before = len(job.events(event="forked"))
    client = job.popen("fifo.tif", "f.tif", "f.jpg")
    deadline = time.monotonic() + 60
    while len(job.events(event="forked")) == before:
        assert time.monotonic() < deadline, job.events()
        time.sleep(0.02)
    return client, job.events(event="forked")[-1]["child"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV])
def test_crashed_child_fails_only_its_invocation_with_the_same_signal(job: Job, signum: int) -> None:
    client, child = _blocked_on_fifo(job)
    client_maps = Path(f"/proc/{client.pid}/maps").read_text()  # the thin client, waiting: no GDAL, no numpy
    assert "libgdal" not in client_maps and "numpy" not in client_maps
    os.kill(child, signum)
    client.communicate(timeout=60)
    assert client.returncode == -signum  # died of the child's signal, as pegasus-kickstart would record it
    after = job.run(small_input(job), "next.tif", "next.jpg", "--bands", "3")
    assert after.returncode == 0, after.stderr
    assert job.clients()[-1]["served_by"] == job.servers()[0]  # the same server survived the crash


def test_handler_killed_mid_request_client_converts_itself_and_the_orphan_child_dies(job: Job) -> None:
    client, child = _blocked_on_fifo(job)
    handler = job.events(role="server", event="forked")[-1]["pid"]
    os.kill(handler, signal.SIGKILL)
    assert wait_gone(child, 10)  # PR_SET_PDEATHSIG: no orphan keeps writing the outputs
    # The client now converts in its own process and opens the FIFO itself: feed it a non-TIFF.
    writer = threading.Thread(target=lambda: (job.path / "fifo.tif").write_bytes(b"not a tiff at all"))
    writer.start()
    _, err = client.communicate(timeout=60)
    writer.join(10)
    assert client.returncode == ExitCode.INPUT_UNREADABLE, err
    assert err.decode().startswith("INPUT_UNREADABLE: not a TIFF file")
    assert job.clients()[-1]["fallback"] == "server died mid-request"


def test_killed_client_takes_its_child_with_it(job: Job) -> None:
    """HTCondor or kickstart killing the task must stop its conversion, as it would a converter process."""
    client, child = _blocked_on_fifo(job)
    client.kill()
    client.communicate(timeout=60)
    assert wait_gone(child, 10)
    assert alive(job.servers()[0])


def test_server_killed_while_a_request_waits_client_converts_itself(job: Job) -> None:
    src = small_input(job)
    job.run(src, "a.tif", "a.jpg")
    (server,) = job.servers()
    os.kill(server, signal.SIGSTOP)  # the next request waits in its backlog, accepted by nobody
    try:
        client = job.popen(src, "b.tif", "b.jpg", "--bands", "3")
        job.wait_event(role="client", event="request sent", pid=client.pid)
    finally:
        os.kill(server, signal.SIGKILL)
    _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert job.clients()[-1] == {**job.clients()[-1], "served_by": None, "fallback": "server died mid-request"}
    assert (job.path / "b.tif").read_bytes() == (job.path / "a.tif").read_bytes()


def test_two_first_invocations_at_once_end_up_with_one_server(job: Job) -> None:
    """Both may fork a server; the abstract name binds once, so the loser exits and both are served."""
    src = small_input(job)
    clients = [job.popen(src, f"o{i}.tif", f"o{i}.jpg") for i in range(2)]
    for client in clients:
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
    (server,) = job.servers()
    assert [c["served_by"] for c in job.clients()] == [server, server]


def test_after_the_server_is_killed_the_next_invocation_starts_another(job: Job) -> None:
    src = small_input(job)
    job.run(src, "a.tif", "a.jpg")
    (first,) = job.servers()
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first, 10)
    again = job.run(src, "b.tif", "b.jpg")
    assert again.returncode == 0, again.stderr
    servers = job.servers()
    assert len(servers) == 2 and job.clients()[-1]["served_by"] == servers[1] != first


# ---------------------------------------------------------------- lifetime and switches


def test_idle_server_exits_after_the_timeout(job: Job) -> None:
    job.run(small_input(job), "a.tif", "a.jpg", COG_PIPELINE_WARM_IDLE="1")
    (server,) = job.servers()
    assert alive(server)
    assert wait_gone(server, 10)
    exit_event = job.wait_event(role="server", event="exit")
    assert exit_event["reason"] == "idle" and exit_event["cpu_children"] > 0


def test_server_exits_when_its_directory_disappears(job: Job) -> None:
    sub = job.path / "scratch"
    sub.mkdir()
    rasters.write(sub / "in.tif", rasters.textured(1, 40, 40))
    inner = Job(sub, job.python)
    inner.trace_file = job.trace_file
    assert inner.run("in.tif", "a.tif", "a.jpg").returncode == 0
    (server,) = job.servers()
    for path in sorted(sub.iterdir()):
        path.unlink()
    sub.rmdir()
    assert wait_gone(server, 10)
    assert job.wait_event(role="server", event="exit")["reason"] == "directory gone"


def test_warm_0_converts_in_process_and_starts_no_server(job: Job) -> None:
    src = small_input(job)
    for name in ("a", "b"):
        assert job.run(src, f"{name}.tif", f"{name}.jpg", COG_PIPELINE_WARM="0").returncode == 0
    assert job.events() == []


def test_a_working_directory_path_longer_than_sun_path_is_served(job: Job) -> None:
    """The address is an abstract name (user, device, inode, identity), so no 108-byte socket path limit."""
    deep = job.path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    inner = Job(deep, job.python)
    inner.trace_file = job.trace_file
    src = small_input(inner)
    for name in ("a", "b"):
        assert inner.run(src, f"{name}.tif", f"{name}.jpg").returncode == 0
    assert len(str(deep)) > 240 and [c["served_by"] for c in job.clients()] == job.servers() * 2


def test_inside_an_htcondor_job_it_is_on_without_being_asked(job: Job) -> None:
    src = small_input(job)
    for name in ("a", "b"):
        done = job.run(src, f"{name}.tif", f"{name}.jpg", COG_PIPELINE_WARM="", _CONDOR_SCRATCH_DIR=str(job.path))
        assert done.returncode == 0, done.stderr
    assert [c["served_by"] for c in job.clients()] == job.servers() * 2


@pytest.mark.parametrize("value,seconds", [("", 20.0), ("1.5", 1.5), ("0", 20.0), ("-3", 20.0), ("soon", 20.0)])
def test_idle_timeout_setting(value: str, seconds: float) -> None:
    assert idle_seconds({"COG_PIPELINE_WARM_IDLE": value}) == seconds


@pytest.mark.parametrize(
    "env,expected",
    [({}, False), ({"_CONDOR_JOB_AD": "/x/.job.ad"}, True), ({"_CONDOR_SCRATCH_DIR": "/x"}, True),
     ({"_CONDOR_JOB_AD": "/x/.job.ad", "COG_PIPELINE_WARM": "0"}, False), ({"COG_PIPELINE_WARM": "1"}, True)],
)
def test_warm_is_on_by_default_only_inside_an_htcondor_job(env: dict, expected: bool) -> None:
    assert warm_enabled(env) is expected


@needs_osgeo
def test_clients_of_another_interpreter_get_a_server_of_their_own(tmp_path: Path) -> None:
    """A venv client must not be served by a system-Python server (another GDAL), nor the reverse."""
    venv, system = Job(tmp_path, sys.executable), Job(tmp_path, SYSTEM_PYTHON)
    src = small_input(venv)
    try:
        assert venv.run(src, "a.tif", "a.jpg").returncode == 0
        assert system.run(src, "b.tif", "b.jpg").returncode == 0
        servers = venv.servers()
        assert len(servers) == 2 and [c["served_by"] for c in venv.clients()] == servers
    finally:
        for pid in venv.servers():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
