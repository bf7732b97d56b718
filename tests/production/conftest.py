"""The production suite: the whole path on a real HTCondor pool and a real Pegasus 5.1, with S3 on loopback.

It runs when the real tools are there and says why it skips when they are not:

* HTCondor 25 with a running pool: ``condor_q``, ``condor_submit_dag`` on PATH and ``condor_status`` answering
  (``CONDOR_CONFIG`` as the pool needs it);
* Pegasus 5.1: ``pegasus-plan`` on PATH (its own Python found as ``pegasus-plan`` finds it);
* a submitting user: HTCondor refuses jobs submitted by root, so a suite run by root submits as the
  unprivileged ``COG_PRODUCTION_USER`` (which must be able to read this checkout);
* a Python for that user to run the project with: ``COG_PRODUCTION_PYTHON``, a venv with this checkout
  installed (``python3 -m venv V && V/bin/pip install -e '.[test]'``), readable by that user.

Nothing here builds or installs HTCondor or Pegasus (README, "Production tests").
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .recorded_s3 import RecordedS3

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("condor_q", "condor_submit_dag", "condor_status", "pegasus-plan", "pegasus-status", "pegasus-analyzer", "pegasus-statistics")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.production)
            item.add_marker(pytest.mark.slow)


def _why_not() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the real HTCondor/Pegasus tools are not on PATH ({', '.join(missing)} missing; see README, Production tests)"
    try:
        done = subprocess.run(["condor_status", "-af", "Name"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"condor_status did not answer: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return f"no HTCondor pool answers condor_status (exit {done.returncode}: {done.stderr.strip()[:200]})"
    python = os.environ.get("COG_PRODUCTION_PYTHON")
    if not python or not Path(python).is_file():
        return "COG_PRODUCTION_PYTHON does not name a Python with this checkout installed (README, Production tests)"
    if os.geteuid() == 0 and not os.environ.get("COG_PRODUCTION_USER"):
        return "running as root, and HTCondor refuses jobs submitted by root: set COG_PRODUCTION_USER"
    return None


@dataclass
class Pool:
    """Runs commands as the submitting user, with the tools' PATH and the pool's CONDOR_CONFIG."""

    user: str | None
    python: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def command(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["runuser", "-u", self.user, "--", "env", *[f"{k}={v}" for k, v in self.env.items()], *argv]

    def run(self, argv: list[str], timeout: float = 600, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout,
                              env=None if self.user else {**os.environ, **self.env}, cwd=cwd)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def cog(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run([self.python, "-m", "cog_pipeline", *args], timeout=timeout)

    def owned_dir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o755)
        return path


@pytest.fixture(scope="session")
def pool() -> Pool:
    why = _why_not()
    if why:
        pytest.skip(why)
    user = os.environ.get("COG_PRODUCTION_USER") if os.geteuid() == 0 else None
    home = Path(pwd.getpwnam(user).pw_dir) if user else Path.home()
    keep = ("PATH", "CONDOR_CONFIG", "PEGASUS_HOME", "PEGASUS_PYTHON", "JAVA_HOME", "LANG", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), PEGASUS_METRICS="false", AWS_ACCESS_KEY_ID="testing-access-key",
               AWS_SECRET_ACCESS_KEY="testing-secret-key", AWS_DEFAULT_REGION="us-east-1")
    return Pool(user, os.environ["COG_PRODUCTION_PYTHON"], home, env)


@pytest.fixture(scope="session")
def s3() -> Iterator[RecordedS3]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    server = RecordedS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def workspace(pool: Pool) -> Iterator[Path]:
    """A folder the submitting user owns (work dir, key files), in its home: pegasus-plan refuses credentials
    under HTCondor's MOUNT_UNDER_SCRATCH folders (/tmp, /var/tmp)."""
    path = pool.owned_dir(pool.owned_dir(pool.home / "cog-production") / f"{os.getpid()}-{time.monotonic_ns()}")
    yield path
    # DAGMan and pegasus-monitord may still be finishing (after the END hook): let them leave, then clean up.
    constraint = f'regexp("^{path}/", Iwd)'
    deadline = time.monotonic() + 120
    while pool.run(["condor_q", "-constraint", constraint, "-af", "ClusterId"]).stdout.strip():
        if time.monotonic() > deadline:
            pool.run(["condor_rm", "-constraint", constraint])
            break
        time.sleep(2)
    if not os.environ.get("COG_PRODUCTION_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout: float, interval: float = 3.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
