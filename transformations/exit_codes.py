"""Exit codes of ``generate_cog`` and the typed error that carries one. Other tools (the engines, reconcile) code
against these numbers, so they never change; a failure is reported as one line that starts with the code's name.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Sequence


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # internal or unexpected error
    USAGE = 2  # command-line usage error (argparse's default)
    INPUT_UNREADABLE = 3  # missing, empty, truncated, corrupt, not a TIFF
    UNSUPPORTED_INPUT = 4  # readable, but no preview can be made from it (e.g. complex data)
    BAND_MISMATCH = 5  # manifest --bands differs from the file; outputs written per the file
    OUTPUT_INVALID = 6  # the COG or the JPEG failed verification
    OUT_OF_DISK = 7  # no space left while writing the outputs
    SOURCE_CHANGED = 8  # the staged input is not the version the workflow listed (re-uploaded since)


class ConversionError(Exception):
    """A conversion failed; no output is left behind. ``code`` is the exit code, ``line`` the one line ``main``
    prints on stderr."""

    def __init__(self, code: ExitCode, reason: str):
        self.code = ExitCode(code)
        self.reason = one_line(reason)
        self.line = f"{self.code.name}: {self.reason}"
        super().__init__(self.line)


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 600 else text[:597] + "..."


class GdalFailure(Exception):
    """A GDAL call failed; ``messages`` holds what GDAL reported on the way."""

    def __init__(self, message: str, messages: Sequence[str] = ()):
        self.messages = [m for m in messages if m]
        if message and message not in self.messages:
            self.messages.append(message)
        super().__init__(message or (self.messages[-1] if self.messages else "GDAL call failed"))

    @property
    def text(self) -> str:
        return " | ".join(self.messages) or str(self)

