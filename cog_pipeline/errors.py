"""Failures as one line: how an OSError or a damaged run file is reported by the CLI and by a tick's runs.

Kept apart so the library (pipeline) and the CLI (options) word the same failure the same way.
"""

from __future__ import annotations

import json

import yaml


def one_line(exc: BaseException) -> str:
    """An exception as one line (YAML and JSON errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """`Read-only file system: /path` rather than `[Errno 30] ...`; paths only, never file contents."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or one_line(exc)}{where}" if exc.strerror else one_line(exc)


# A damaged run file (reconcile.json, workflow.yml, ...): JSON and YAML parse errors, undecodable bytes.
RUN_FILE_ERRORS: tuple[type[BaseException], ...] = (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError)
