"""Manifest parsing: turn the uploaded CSV into rows to convert and rows that fail straight away, with reasons.

A manifest is `key,bands` per line, no header. Parsing never raises on content: a bad row becomes a
RejectedRow so it ends in the failed file with a reason and never takes the rest of the manifest down.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_BANDS = 1024

# Rows end at \n, \r\n or \r (universal newlines) and nowhere else: str.splitlines() would also split a
# key at U+2028, U+0085, form feed, ..., making two bogus rows and shifting every line number after it.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# "Surrounding spaces" are spaces and tabs. str.strip() would also eat control characters such as \x1f
# (Python counts them as whitespace), silently accepting a key that is not the one written.
_BLANKS = " \t"
_BANDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ManifestRow:
    """One image to convert. `line` is 1-based in the manifest; `text` is the row as written (trimmed)."""

    line: int
    key: str
    bands: int
    text: str

    @property
    def jpg_key(self) -> str:
        return self.key[: -len(".tif")] + ".jpg"


@dataclass(frozen=True)
class RejectedRow:
    """A row that cannot be converted; `text` goes to the failed file unchanged so it can be fixed and resubmitted."""

    line: int
    text: str
    reason: str


@dataclass
class Manifest:
    rows: list[ManifestRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    # Later occurrences of a key already in `rows`: converted once, reported, and filed with their first occurrence.
    duplicates: list[tuple[ManifestRow, int]] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.rows) + len(self.rejected) + len(self.duplicates)


def check_key(key: str) -> str | None:
    """Why `key` is not acceptable as an input image key, or None when it is."""
    if not key:
        return "empty key"
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in key):
        return "key contains control characters"
    if key.startswith("/"):
        return "key starts with '/'"
    if "\\" in key:
        return "key contains a backslash"
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts):
        return "key contains '.' or '..' path segments"
    if any(part == "" for part in parts):
        return "key contains an empty path segment ('//' or trailing '/')"
    if not key.endswith(".tif"):
        return "key does not end in '.tif'"
    if key == ".tif" or parts[-1] == ".tif":
        return "key has no file name before '.tif'"
    return None


def parse_row(line_no: int, text: str) -> ManifestRow | RejectedRow:
    key, sep, bands_text = text.rpartition(",")
    if not sep:
        return RejectedRow(line_no, text, "malformed row: expected 'key,bands'")
    key = key.strip(_BLANKS)
    bands_text = bands_text.strip(_BLANKS)
    if not bands_text:
        return RejectedRow(line_no, text, "malformed row: band count is missing")
    # ASCII digits only: int() would also take '1_0', '+3' or non-ASCII digits such as '３'.
    if not _BANDS.fullmatch(bands_text):
        return RejectedRow(line_no, text, f"malformed row: band count {bands_text!r} is not an integer")
    bands = int(bands_text)
    if not 1 <= bands <= MAX_BANDS:
        return RejectedRow(line_no, text, f"malformed row: band count {bands} is out of range 1-{MAX_BANDS}")
    problem = check_key(key)
    if problem:
        return RejectedRow(line_no, text, f"bad key: {problem}")
    return ManifestRow(line_no, key, bands, text)


def decode(data: bytes) -> str:
    """Manifests come from many tools: strip a UTF-8 BOM and survive stray bytes (the row then fails, not the file)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    return data.decode("utf-8", errors="replace")


def parse_manifest(data: bytes | str) -> Manifest:
    text = decode(data) if isinstance(data, bytes) else data.lstrip("\ufeff")
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last row; it does not start another
    return parse_lines(lines)


def parse_lines(lines: Iterable[str]) -> Manifest:
    manifest = Manifest()
    first_line_of: dict[str, int] = {}
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip(_BLANKS + "\r\n")  # lines read from a file may keep their line break
        if not text:
            continue
        if "\ufffd" in text:
            manifest.rejected.append(RejectedRow(line_no, text, "row is not valid UTF-8"))
            continue
        parsed = parse_row(line_no, text)
        if isinstance(parsed, RejectedRow):
            manifest.rejected.append(parsed)
        elif parsed.key in first_line_of:
            manifest.duplicates.append((parsed, first_line_of[parsed.key]))
        else:
            first_line_of[parsed.key] = line_no
            manifest.rows.append(parsed)
    return manifest
