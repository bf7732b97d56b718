"""transformations/linux.py: PDEATHSIG on this Linux machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cog_pipeline.transformations import linux

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux calls")


def test_pdeathsig_kills_a_child_whose_parent_dies(tmp_path: Path) -> None:
    """The grandchild asks for SIGKILL when its parent dies; the parent then exits; the grandchild must go."""
    pid_file = tmp_path / "pid"
    child = tmp_path / "child.py"
    child.write_text("import os, sys, time\n"
                     "from cog_pipeline.transformations import linux\n"
                     "linux.set_pdeathsig()\n"
                     "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                     "time.sleep(60)\n")
    parent = tmp_path / "parent.py"
    parent.write_text("import os, subprocess, sys, time\n"
                      "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])\n"
                      "while not (os.path.exists(sys.argv[2]) and open(sys.argv[2]).read()):\n"
                      "    time.sleep(0.05)\n")
    subprocess.run([sys.executable, str(parent), str(child), str(pid_file)], check=True, timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the child outlived its parent")
