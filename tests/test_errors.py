"""Bad input and broken surroundings end in one clear line and a known exit code, never a traceback, and
lose nothing (issue 8.4, 8.11, 8.13). Real folders, real files and devices, real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cog_pipeline.cli import main as cli


def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("pattern", ["*", "*raw*", "*.c?v", ""])
def test_a_pattern_that_could_match_images_is_refused_before_listing(tmp_path, pattern):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "img000.tif").write_bytes(b"II*\x00" + bytes(60))
    result = CliRunner().invoke(cli, ["scan", "--local-root", str(tmp_path), "--input-bucket", "in", "--output-bucket", "out", "-p", pattern, "-w", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "pattern" in _one_line(result.output)
    assert (tmp_path / "in" / "img000.tif").is_file() and not (tmp_path / "w").exists()


def test_secret_key_file_that_is_a_device_is_named_as_one(tmp_path):
    access = tmp_path / "access"
    access.write_text("AKIA\n")
    result = CliRunner().invoke(cli, ["scan", "-e", "http://127.0.0.1:9", "--input-bucket", "in", "--output-bucket", "out", "-a", str(access), "-s", "/dev/urandom", "-w", str(tmp_path / "w")])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "/dev/urandom" in line and "device" in line and "no such file" not in line


def test_a_key_file_that_is_a_folder_is_named_as_one(tmp_path):
    access = tmp_path / "access"
    access.write_text("AKIA\n")
    result = CliRunner().invoke(cli, ["scan", "-e", "http://127.0.0.1:9", "--input-bucket", "in", "--output-bucket", "out", "-a", str(access), "-s", str(tmp_path), "-w", str(tmp_path / "w")])
    assert result.exit_code == 2 and "folder" in _one_line(result.output)
