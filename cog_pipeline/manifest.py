"""Manifest parsing: turn the uploaded CSV into rows to convert and rows that fail straight away, with reasons.

A manifest is `key,bands` per line, no header. Parsing never raises on content: a bad row becomes a
RejectedRow so it ends in the failed file with a reason and never takes the rest of the manifest down.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_BANDS = 1024


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
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
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
    key = key.strip()
    bands_text = bands_text.strip()
    if not bands_text:
        return RejectedRow(line_no, text, "malformed row: band count is missing")
    try:
        bands = int(bands_text, 10)
    except ValueError:
        return RejectedRow(line_no, text, f"malformed row: band count {bands_text!r} is not an integer")
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
    return parse_lines(text.splitlines())


def parse_lines(lines: Iterable[str]) -> Manifest:
    manifest = Manifest()
    first_line_of: dict[str, int] = {}
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
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
