"""Progress for people, silence for cron, JSON for scripts: `scan` on a real pseudo-terminal and on a pipe,
`scan --json` and `status` (table and --json) after real runs on folder buckets."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli.main import main
from cog_pipeline.cli.progress import ScanProgress

KEY = "Eau Claire/a #1 ü.tif"


def _buckets(shared_testdata: Path, root: Path) -> list[str]:
    (root / "in" / KEY).parent.mkdir(parents=True)
    (root / "out").mkdir(parents=True)
    shutil.copyfile(shared_testdata / "rasterio/byte.tif", root / "in" / KEY)
    (root / "in" / "m_raw.csv").write_text(f"{KEY},1\nnot-uploaded.tif,1\n", encoding="utf-8")
    return ["scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(root), "-w", str(root.parent / "work"), "--workers", "1"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI", "TERM")}
    return env | {"TERM": "xterm-256color", "COLUMNS": "110"}


def _on_pty(args: list[str]) -> str:
    """Run a command with stdin/stdout/stderr on a fresh pseudo-terminal; everything it drew, as text."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 110, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=_env(), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=180) == 0, b"".join(chunks)[-3000:]
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_scan_on_a_terminal_shows_every_phase(shared_testdata: Path, tmp_path: Path) -> None:
    drawn = _on_pty([sys.executable, "-m", "cog_pipeline", *_buckets(shared_testdata, tmp_path / "b")])
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)
    for done in ("✓ claim", "✓ preflight", "✓ convert", "✓ reconcile"):
        assert re.search(re.escape(done) + r" \(\d+\.\d s\)", plain), (done, plain[-3000:])
    assert "converting (1 workers)" in plain and "ETA" in plain  # the engine's bar with its ETA
    assert plain.index("✓ claim") < plain.index("✓ preflight") < plain.index("✓ convert") < plain.index("✓ reconcile")
    assert "\x1b[" in drawn  # it really drew (cursor movement, colour)


@pytest.mark.slow
def test_scan_in_cron_prints_lines_only(shared_testdata: Path, tmp_path: Path) -> None:
    """stdout a pipe, as under cron: the message lines, no spinner, no bar, no escape codes."""
    proc = subprocess.run([sys.executable, "-m", "cog_pipeline", *_buckets(shared_testdata, tmp_path / "b")],
                          capture_output=True, text=True, env=_env(), stdin=subprocess.DEVNULL, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "claimed m_raw.csv" in proc.stdout and "reconciled m_raw.csv: 1 processed, 1 failed" in proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr and "✓" not in proc.stdout and "ETA" not in proc.stdout


@pytest.mark.slow
def test_scan_json_then_status_table_and_json(shared_testdata: Path, tmp_path: Path) -> None:
    args = _buckets(shared_testdata, tmp_path / "b")
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # messages went to stderr: stdout is the JSON alone
    (run,) = out["reconciled"]
    assert (run["processed"], run["failed"], run["manifest_key"]) == (1, 1, "m_raw.csv")
    assert run["failed_key"].startswith("m_failed-") and Path(run["report"]).is_file()
    assert out["claimed"] == [run["run_dir"]] and out["errors"] == []

    work = str(tmp_path / "b" / ".." / "work")
    status = json.loads(CliRunner().invoke(main, ["status", "-w", work, "--json"]).stdout)
    assert status["schema_version"] == 1
    rows = status["runs"]
    assert [(r["run"], r["state"], r["done"], r["failed"], r["engine"]) for r in rows] == [(Path(run["run_dir"]).name, "reconciled", 1, 1, "local")]
    assert rows[0]["where"] == run["report"] and re.fullmatch(r"\d+[smhd]", rows[0]["age"])
    table = CliRunner().invoke(main, ["status", "-w", work]).output
    line = next(ln for ln in table.splitlines() if Path(run["run_dir"]).name[-6:] in ln)
    assert "reconciled" in line and "local" in line and "1 run(s)" in table


def test_cli_runner_is_not_a_terminal_so_scan_stays_quiet(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(main, ["scan", "--input-bucket", "in", "--output-bucket", "out", "--local-root", str(tmp_path), "-w", str(tmp_path / "w")])
    assert result.exit_code == 0 and result.output == "nothing to do: no manifest matches and no run is waiting\n"


def test_phases_render_on_a_terminal_console_and_not_off_it() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    shown = ScanProgress(True, Console(file=buffer, force_terminal=True, width=100))
    shown.phase("claim")
    shown.echo("claimed [b]a[/b].csv")  # user text: printed as written, never as markup
    shown.phase("convert")
    shown.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert "claimed [b]a[/b].csv" in text and re.search(r"✓ claim \(\d+\.\d s\)", text) and "✓ convert" in text
    off = ScanProgress(False, Console(file=io.StringIO(), force_terminal=True))
    off.phase("claim")
    off.close()
    assert off.console.file.getvalue() == ""
