"""Where a scan is, for a person at a terminal; nothing extra for cron.

`ScanProgress.phase` is `ScanOptions.on_phase`: the tick names each phase as it starts (claim, preflight,
convert, reconcile). At a terminal the current phase shows as a spinner and each finished one as a line with
its duration; conversion shows the local engine's own bar (done/total, images per second, ETA). Only one live
display can hold a terminal, so the spinner is stopped before the engine's bar starts. When stdout is not a
terminal (cron, a pipe, a test runner) every method is a no-op but `echo`, which prints plain lines.
"""

from __future__ import annotations

import time
from typing import Any

import click

LABELS = {
    "claim": "claim: looking for manifests, renaming them processing",
    "preflight": "pre-flight: listing inputs, writing the workflow",
    "convert": "convert",
    "reconcile": "reconcile: deciding every row, writing the result files and the report",
}


class ScanProgress:
    """Phase spinner and finished-phase lines on an interactive stdout; plain `echo` lines otherwise."""

    def __init__(self, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled
        self._console = console
        self._status: Any = None
        self._current: str | None = None
        self._started = 0.0

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def phase(self, name: str) -> None:
        """`name` starts now: close the previous phase (a line with its time) and show this one."""
        if not self.enabled:
            return
        self._finish_current()
        self._current, self._started = name, time.monotonic()
        if name == "convert":  # the engine draws its own bar with an ETA; a spinner would fight it for the terminal
            self.console.print(f"[bold]→[/] {LABELS[name]}")
            return
        self._status = self.console.status(LABELS.get(name, name))
        self._status.start()

    def echo(self, line: str) -> None:
        """One message line, above the spinner; keys are user data, so never read as rich markup."""
        if not self.enabled:
            click.echo(line)
            return
        from rich.text import Text

        self.console.print(Text(line))

    def close(self) -> None:
        if self.enabled:
            self._finish_current()

    def _finish_current(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._current is not None:
            self.console.print(f"[green]✓[/] {self._current} ({time.monotonic() - self._started:.1f} s)")
            self._current = None
