"""Manifest parsing: turn the uploaded CSV into rows to convert and rows that fail straight away, with reasons.

A manifest is `key,bands` per line, no header. Parsing never raises on content: a bad row becomes a
RejectedRow so it ends in the failed file with a reason and never takes the rest of the manifest down.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cog_pipeline.outputs import IMAGE_SUFFIXES, Output, declared, image_suffix

MAX_BANDS = 1024
MAX_KEY_BYTES = 1024  # S3's limit for an object key: no image can have a longer one
MAX_SEGMENT_BYTES = 255  # a file name (NAME_MAX): no folder bucket or job scratch folder can hold a longer one

# Rows end at \n, \r\n or \r (universal newlines) and nowhere else: str.splitlines() would also split a
# key at U+2028, U+0085, form feed, ..., making two bogus rows and shifting every line number after it.
# "Surrounding spaces" are spaces and tabs. str.strip() would also eat control characters such as \x1f
# (Python counts them as whitespace), silently accepting a key that is not the one written.
_BLANKS = " \t"
_BANDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ManifestRow:
    """One image to convert. `line` is 1-based in the manifest; `text` is the row as written (trimmed);
    `raw` the row's exact bytes in the manifest (line ending stripped), which is what the result files get."""

    line: int
    key: str
    bands: int
    text: str
    raw: bytes = field(default=b"", compare=False, repr=False)  # derived from the same line: not identity


@dataclass(frozen=True)
class RejectedRow:
    """A row that cannot be converted; `raw` goes to the failed file byte for byte so it can be fixed and
    resubmitted, `text` (a readable rendering: undecodable bytes as \\xNN) goes to the reasons file."""

    line: int
    text: str
    reason: str
    raw: bytes = field(default=b"", compare=False, repr=False)


@dataclass
class Manifest:
    rows: list[ManifestRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    # Later occurrences of a key already in `rows`: converted once, reported, and filed with their first occurrence.
    duplicates: list[tuple[ManifestRow, int]] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.rows) + len(self.rejected) + len(self.duplicates)

    def raw_by_line(self) -> dict[int, bytes]:
        """Every row's original bytes by line number: result files return rows exactly as uploaded."""
        raw = {row.line: row.raw for row in self.rows}
        raw.update((row.line, row.raw) for row in self.rejected)
        raw.update((row.line, row.raw) for row, _ in self.duplicates)
        return raw


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
    size = len(key.encode("utf-8", "surrogateescape"))
    if size > MAX_KEY_BYTES:
        return f"key is {size} bytes, longer than an object key can be ({MAX_KEY_BYTES} bytes of UTF-8)"
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in parts)
    if longest > MAX_SEGMENT_BYTES:
        return f"a path segment of the key is {longest} bytes, longer than a file name can be ({MAX_SEGMENT_BYTES} bytes of UTF-8)"
    suffix = image_suffix(key)
    if suffix is None:
        return "key does not end in '.tif' or '.tiff' (any case)"
    if parts[-1] == suffix:
        return f"key has no file name before {suffix!r}"
    return None


def _unquote(field: str) -> tuple[str, str | None]:
    """A field written with CSV quoting (`"a,b.tif"`, `"say ""hi"".tif"`) -> its value; else unchanged.

    Spreadsheets and csv writers quote a key holding a comma or a quote. A key can never *end* in a quote
    (it ends in `.tif` or `.tiff`), so a field that starts and ends in `"` is unambiguously quoted; any other field is
    taken literally, which keeps keys such as `O'Brien "north"/a.tif` working unquoted.
    """
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        inner = field[1:-1]
        if '"' in inner.replace('""', ""):
            return field, "malformed CSV quoting: a '\"' inside a quoted field must be doubled"
        return inner.replace('""', '"'), None
    return field, None


def _split_row(text: str) -> tuple[str, str] | None:
    """`key,bands` -> (key, bands). A quoted key may hold commas, so split after its closing quote."""
    stripped = text.lstrip(_BLANKS)
    if stripped.startswith('"'):
        close = stripped.rfind('"')
        key, sep, bands = stripped[close + 1 :].partition(",")
        if close > 0 and sep and not key.strip(_BLANKS):
            return stripped[: close + 1], bands
    key, sep, bands = text.rpartition(",")
    return (key, bands) if sep else None


def _short(text: str, limit: int = 40) -> str:
    """A field as a reason quotes it: an absurdly long one is cut, with its length."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def parse_row(line_no: int, text: str, raw: bytes | None = None) -> ManifestRow | RejectedRow:
    raw = text.encode("utf-8", "surrogateescape") if raw is None else raw
    split = _split_row(text)
    if split is None:
        return RejectedRow(line_no, text, "malformed row: expected 'key,bands'", raw)
    key, problem = _unquote(split[0].strip(_BLANKS))
    bands_text, bands_problem = _unquote(split[1].strip(_BLANKS))
    if problem or bands_problem:
        return RejectedRow(line_no, text, f"malformed row: {problem or bands_problem}", raw)
    bands_text = bands_text.strip(_BLANKS)
    if not bands_text:
        return RejectedRow(line_no, text, "malformed row: band count is missing", raw)
    # ASCII digits only: int() would also take '1_0', '+3' or non-ASCII digits such as '３'.
    if not _BANDS.fullmatch(bands_text):
        return RejectedRow(line_no, text, f"malformed row: band count {_short(bands_text)!r} is not an integer", raw)
    if len(bands_text.lstrip("0")) > len(str(MAX_BANDS)):  # int() of 4,300+ digits raises; no band count is that long
        return RejectedRow(line_no, text, f"malformed row: band count {_short(bands_text)} is out of range 1-{MAX_BANDS}", raw)
    bands = int(bands_text)
    if not 1 <= bands <= MAX_BANDS:
        return RejectedRow(line_no, text, f"malformed row: band count {bands} is out of range 1-{MAX_BANDS}", raw)
    problem = check_key(key)
    if problem:
        return RejectedRow(line_no, text, f"bad key: {problem}", raw)
    return ManifestRow(line_no, key, bands, text, raw)


# Rows end at \n, \r\n or \r in the bytes too: no UTF-8 sequence contains those bytes, so splitting the
# bytes first is safe and keeps each row's own bytes, whatever its encoding.
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def split_raw_lines(data: bytes) -> list[bytes]:
    """The manifest's rows as bytes, line endings stripped (a UTF-8 BOM belongs to the file, not a row)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines = _LINE_BREAK_BYTES.split(data)
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last row; it does not start another
    return lines


def _utf8_problem(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"row is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}): object keys are "
            "UTF-8; save the manifest as UTF-8 and resubmit the row"
        )
    return None


def parse_manifest(data: bytes | str) -> Manifest:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return parse_raw_lines(split_raw_lines(data))


@dataclass(frozen=True)
class DuplicateRow:
    """A later occurrence of a key already in an earlier row: converted once, filed with its first occurrence."""

    row: ManifestRow
    first_line: int

    @property
    def line(self) -> int:
        return self.row.line


Parsed = ManifestRow | RejectedRow | DuplicateRow


def iter_parsed(lines: Iterable[bytes], duplicates: bool = True) -> Iterator[Parsed]:
    """Every row, parsed, in line order, one at a time (blank lines are not rows). `duplicates=False` skips
    finding duplicates and collisions (each repeat is yielded as a row of its own), and so keeps no state at all.

    A row repeating an earlier row's key is a DuplicateRow; a row with another key whose outputs would land on
    an earlier row's (`a.tif` and `a.TIF` would both make `a.jpg`) is rejected. The only state kept per row is
    the index that finds both (`_Collisions`: about 100 bytes a row in all).
    """
    index = _Collisions(declared())
    for line_no, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n")
        # Readable form for messages and the reasons file: bytes that are not UTF-8 shown as \xNN, never U+FFFD.
        text = raw.decode("utf-8", errors="backslashreplace").strip(_BLANKS)
        if not text:
            continue
        problem = _utf8_problem(raw)
        if problem:
            yield RejectedRow(line_no, text, problem, raw)
            continue
        parsed = parse_row(line_no, text, raw)
        if isinstance(parsed, RejectedRow) or not duplicates:
            yield parsed
            continue
        earlier = index.earlier(parsed.key)
        if earlier is None:
            index.add(parsed.key, line_no)
            yield parsed
        elif isinstance(earlier, int):
            yield DuplicateRow(parsed, earlier)
        else:
            mine, output, first_line, theirs = earlier
            whose = f"line {first_line}'s" + ("" if theirs is mine else f" {theirs.label}")
            yield RejectedRow(line_no, text, f"bad key: its {mine.label} {output} would overwrite {whose}; "
                              "rename one of the two images", raw)


class _Collisions:
    """The earlier row a row repeats, or one of whose outputs it would overwrite (the outputs cog_pipeline.outputs
    declares), from one index entry per accepted row: its key's stem, with its line and its key's image suffix
    (the bare line number for the usual `.tif`).

    For each of a row's outputs and each declared output, the stem of a row that would write the latter where
    the row writes the former follows from the suffixes alone, and is looked up: `a.TIF`'s preview `a.jpg` is
    the preview of stem `a`, so of `a.tif`. Only pairs of outputs whose names can meet are tried: for the COG
    and the JPEG, the JPEG with itself, so a row costs one lookup besides its duplicate check.
    """

    def __init__(self, kinds: Iterable[Output]) -> None:
        kinds = tuple(kinds)
        self.seen: dict[str, int | tuple[int, str]] = {}
        self.by_key = all(kind.suffix is None for kind in kinds)  # every output at the key: only repeats meet
        self.pairs = [(mine, theirs) for mine in kinds for theirs in kinds if _can_meet(mine.suffix, theirs.suffix)]

    def _index_name(self, key: str) -> tuple[str, str]:
        suffix = image_suffix(key) or ""
        return (key if self.by_key else key[: len(key) - len(suffix)]), suffix

    def _get(self, name: str) -> tuple[int, str] | None:
        entry = self.seen.get(name)
        return None if entry is None else (entry, ".tif") if isinstance(entry, int) else entry

    def earlier(self, key: str) -> int | tuple[Output, str, int, Output] | None:
        """None (a new image), the line whose key `key` repeats, or (my output, its key, the earlier row's line,
        the earlier row's output written there)."""
        name, suffix = self._index_name(key)
        first = self._get(name)
        if first is not None and (self.by_key or first[1] == suffix):
            return first[0]
        for mine, theirs in self.pairs:
            output = mine.key_of(key)
            if theirs.suffix is None:  # their own key: an image key
                their_suffix = image_suffix(output)
                if their_suffix is None:
                    continue
                stem = output[: len(output) - len(their_suffix)]
            elif output.endswith(theirs.suffix):
                stem, their_suffix = output[: len(output) - len(theirs.suffix)], None
            else:
                continue
            first = self._get(stem)
            if first is not None and their_suffix in (None, first[1]):
                return mine, output, first[0], theirs
        return None

    def add(self, key: str, line: int) -> None:
        name, suffix = self._index_name(key)
        self.seen[name] = line if suffix == ".tif" or self.by_key else (line, suffix)


def _can_meet(mine: str | None, theirs: str | None) -> bool:
    """Whether outputs named by these suffixes (None: the key itself) can share a name for two keys."""
    if mine is None and theirs is None:
        return False  # two keys are two names
    if mine is None or theirs is None:  # a stem plus the other's suffix can be an image key
        named = (mine or theirs or "").lower()
        return any(s.endswith(named) or named.endswith(s) for s in IMAGE_SUFFIXES)
    return mine.endswith(theirs) or theirs.endswith(mine)  # `.jpg` with itself: keys sharing a stem


def iter_raw_lines(path: Path) -> Iterator[bytes]:
    """The rows of a manifest file as bytes, read as a stream: the same rows as `split_raw_lines` gives."""
    with open(path, "rb") as fh:
        first = True
        for chunk in fh:  # ends at b"\n" (or at the end of the file)
            if first:
                first = False
                if chunk.startswith(codecs.BOM_UTF8):
                    chunk = chunk[len(codecs.BOM_UTF8):]
                    if not chunk:  # the file is a BOM and nothing else
                        return
            if chunk.endswith(b"\n"):
                chunk = chunk[:-1]
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
            yield from chunk.split(b"\r")


def iter_manifest_file(path: Path, duplicates: bool = True) -> Iterator[Parsed]:
    """Every row of a manifest file, parsed, as a stream (see `iter_parsed`)."""
    return iter_parsed(iter_raw_lines(path), duplicates)


def parse_raw_lines(lines: Iterable[bytes]) -> Manifest:
    """The whole manifest in memory (for small manifests and tests; the pipeline streams `iter_parsed`)."""
    manifest = Manifest()
    for parsed in iter_parsed(lines):
        if isinstance(parsed, ManifestRow):
            manifest.rows.append(parsed)
        elif isinstance(parsed, RejectedRow):
            manifest.rejected.append(parsed)
        else:
            manifest.duplicates.append((parsed.row, parsed.first_line))
    return manifest


def parse_lines(lines: Iterable[str]) -> Manifest:
    """Rows already decoded (e.g. read from a text file): each may keep its line break."""
    return parse_raw_lines(line.encode("utf-8", "surrogateescape") for line in lines)
