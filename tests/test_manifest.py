"""Manifest parsing: tolerant of how manifests are written, strict about what a row may ask for."""

from __future__ import annotations

import codecs

import pytest

from cog_pipeline.outputs import COG, PREVIEW
from cog_pipeline.run.manifest import ManifestRow, RejectedRow, parse_lines, parse_manifest, parse_row


def keys(data: bytes | str) -> list[str]:
    return [row.key for row in parse_manifest(data).rows]


def only_rejection(data: bytes | str) -> RejectedRow:
    manifest = parse_manifest(data)
    assert manifest.rows == [] and len(manifest.rejected) == 1, manifest
    return manifest.rejected[0]


# ---------------------------------------------------------------------------------------------- good rows


def test_plain_row_gives_key_bands_line_and_text() -> None:
    assert parse_manifest(b"Counties/WI/Wood/1band.tif,1\n").rows == [
        ManifestRow(1, "Counties/WI/Wood/1band.tif", 1, "Counties/WI/Wood/1band.tif,1")
    ]


def test_jpg_key_replaces_the_tif_suffix() -> None:
    key = parse_manifest("a/b.tif,3").rows[0].key
    assert (COG.key_of(key), PREVIEW.key_of(key)) == ("a/b.tif", "a/b.jpg")


@pytest.mark.parametrize(("key", "jpg"), [("LC08_B4.TIF", "LC08_B4.jpg"), ("a/b.tiff", "a/b.jpg"), ("a/b.TiFf", "a/b.jpg"),
                                          ("a.b.Tif", "a.b.jpg"), ("x.tif.tif", "x.tif.jpg")])
def test_tif_and_tiff_in_any_case_are_accepted_and_the_jpeg_is_named_after_the_key_without_its_extension(key, jpg) -> None:
    row = parse_manifest(f"{key},1\n").rows[0]
    assert (row.key, PREVIEW.key_of(row.key)) == (key, jpg)


def test_two_keys_whose_previews_would_collide_keep_the_first_and_fail_the_second() -> None:
    manifest = parse_manifest("a/b.tif,1\na/b.TIF,1\na/b.tiff,3\n")
    assert [r.key for r in manifest.rows] == ["a/b.tif"]
    assert [(r.line, r.reason) for r in manifest.rejected] == [
        (2, "bad key: its preview a/b.jpg would overwrite line 1's; rename one of the two images"),
        (3, "bad key: its preview a/b.jpg would overwrite line 1's; rename one of the two images")]


def test_crlf_line_endings_are_tolerated() -> None:
    assert keys(b"a.tif,1\r\nb.tif,3\r\n") == ["a.tif", "b.tif"]


def test_old_mac_cr_line_endings_split_rows() -> None:
    assert keys(b"a.tif,1\rb.tif,3\r") == ["a.tif", "b.tif"]


def test_missing_final_newline_keeps_the_last_row() -> None:
    assert keys(b"a.tif,1\nb.tif,3") == ["a.tif", "b.tif"]


def test_blank_lines_are_skipped_but_line_numbers_stay_true() -> None:
    rows = parse_manifest(b"\na.tif,1\n   \n\t\nb.tif,3\n\n").rows
    assert [(r.line, r.key) for r in rows] == [(2, "a.tif"), (5, "b.tif")]


def test_spaces_and_tabs_around_row_key_and_bands_are_stripped() -> None:
    assert parse_manifest(b"  a.tif , 2 \t\n").rows == [ManifestRow(1, "a.tif", 2, "a.tif , 2")]


def test_utf8_bom_is_ignored_in_bytes() -> None:
    assert keys(codecs.BOM_UTF8 + b"a.tif,1\n") == ["a.tif"]


def test_utf8_bom_is_ignored_in_str() -> None:
    assert keys("\ufeffa.tif,1\n") == ["a.tif"]


def test_key_with_spaces_quotes_and_unicode_is_kept_exactly() -> None:
    key = "Counties/Eau Claire/O'Brien \"north\"/Zürich 北京.tif"
    assert keys(f"{key},4\n".encode()) == [key]


def test_row_splits_on_the_last_comma_so_keys_may_hold_commas() -> None:
    row = parse_manifest("Counties/a,b,c.tif,3").rows[0]
    assert (row.key, row.bands) == ("Counties/a,b,c.tif", 3)


def test_unicode_line_separator_inside_a_key_does_not_split_the_row() -> None:
    manifest = parse_manifest("a\u2028b.tif,1\nc.tif,2\n")
    assert [(r.line, r.key) for r in manifest.rows] == [(1, "a\u2028b.tif"), (2, "c.tif")]


def test_lines_read_from_a_file_keep_their_newlines_and_still_parse() -> None:
    assert [r.key for r in parse_lines(["a.tif,1\r\n", "b.tif,2\n"]).rows] == ["a.tif", "b.tif"]


def test_largest_band_count_is_accepted() -> None:
    assert parse_manifest("a.tif,1024").rows[0].bands == 1024


# ---------------------------------------------------------------------------------------------- rejected rows


@pytest.mark.parametrize(
    ("row", "reason_part"),
    [
        ("a.tif", "expected 'key,bands'"),
        ("a.tif,", "band count is missing"),
        ("a.tif,x", "not an integer"),
        ("a.tif,1.5", "not an integer"),
        ("a.tif,1_0", "not an integer"),
        ("a.tif,+3", "not an integer"),
        ("a.tif,\uff13", "not an integer"),  # FULLWIDTH DIGIT THREE: int() would accept it
        ("a.tif,0", "out of range"),
        ("a.tif,1025", "out of range"),
        ("a.tif,-1", "not an integer"),
        (",1", "empty key"),
        ("a.png,1", "does not end in '.tif' or '.tiff' (any case)"),
        ("a.tif.bak,1", "does not end in '.tif'"),
        ("a.tiffs,1", "does not end in '.tif'"),
        ("/a.tif,1", "starts with '/'"),
        ("a/../b.tif,1", "'..'"),
        ("a/./b.tif,1", "'..'"),
        ("a//b.tif,1", "empty path segment"),
        ("a\\b.tif,1", "backslash"),
        ("a/.tif,1", "no file name"),
        ("a/.TIFF,1", "no file name before '.TIFF'"),
        ("a\x00b.tif,1", "control characters"),
        ("a\tb.tif,1", "control characters"),
        ("a\x7fb.tif,1", "control characters"),
        ("a\x85b.tif,1", "control characters"),  # C1 NEL: splitlines() used to split the row here
        ("a\x0cb.tif,1", "control characters"),  # form feed: likewise
    ],
)
def test_malformed_row_is_rejected_with_a_reason(row: str, reason_part: str) -> None:
    rejected = only_rejection(row + "\n")
    assert (rejected.line, rejected.text, reason_part in rejected.reason) == (1, row, True), rejected.reason


def test_control_character_at_the_end_of_a_key_is_not_silently_stripped() -> None:
    # str.strip() treats \x1f as whitespace; the key written is not 'a.tif' and must not become it.
    assert "control characters" in only_rejection("a.tif\x1f,1\n").reason


def test_invalid_utf8_rejects_only_that_row() -> None:
    manifest = parse_manifest(b"a.tif,1\nb\xff.tif,1\nc.tif,1\n")
    assert ([r.key for r in manifest.rows], [(r.line, r.reason) for r in manifest.rejected]) == (
        ["a.tif", "c.tif"],
        [(2, "row is not valid UTF-8 (byte 0xff at column 2): object keys are UTF-8; save the manifest as UTF-8 and resubmit the row")],
    )


def test_bad_rows_never_abort_the_rest_of_the_manifest() -> None:
    manifest = parse_manifest(b"a.tif,1\n../x.tif,1\nnot a row\nb.tif,2\n")
    assert ([r.key for r in manifest.rows], [r.line for r in manifest.rejected]) == (["a.tif", "b.tif"], [2, 3])


# ---------------------------------------------------------------------------------------------- duplicates, empty


def test_duplicate_row_is_processed_once_and_reported_with_its_first_line() -> None:
    manifest = parse_manifest(b"a.tif,1\nb.tif,1\na.tif,1\n")
    assert ([r.key for r in manifest.rows], [(d.line, first) for d, first in manifest.duplicates]) == (
        ["a.tif", "b.tif"],
        [(3, 1)],
    )


def test_duplicate_key_with_surrounding_spaces_is_still_a_duplicate() -> None:
    assert len(parse_manifest(b"a.tif,1\n  a.tif , 1\n").duplicates) == 1


def test_row_count_counts_rows_rejected_and_duplicates() -> None:
    assert parse_manifest(b"a.tif,1\na.tif,1\nbad\n").row_count == 3


@pytest.mark.parametrize("data", [b"", b"\n\n", codecs.BOM_UTF8, b"\r\n  \r\n", ""])
def test_empty_manifest_parses_to_an_empty_result(data: bytes | str) -> None:
    manifest = parse_manifest(data)
    assert (manifest.rows, manifest.rejected, manifest.duplicates, manifest.row_count) == ([], [], [], 0)


def test_parse_row_keeps_the_text_as_written() -> None:
    assert parse_row(7, "a.tif, 5") == ManifestRow(7, "a.tif", 5, "a.tif, 5")


# ---------------------------------------------------------------------------------------------- original bytes (8.12)


def test_latin1_row_keeps_its_exact_bytes_and_fails_naming_the_encoding() -> None:
    manifest = parse_manifest(b"ok.tif,1\r\ncaf\xe9.tif,1\r\n")
    (rejected,) = manifest.rejected
    assert (rejected.raw, "\ufffd" in rejected.text, "0xe9" in rejected.reason) == (b"caf\xe9.tif,1", False, True)


def test_every_row_keeps_its_bytes_with_surrounding_blanks_but_without_the_line_ending() -> None:
    manifest = parse_manifest(b"\xef\xbb\xbf a.tif , 2 \r\nbad row\nb.tif,1")
    assert manifest.raw_by_line() == {1: b" a.tif , 2 ", 2: b"bad row", 3: b"b.tif,1"}


def test_duplicate_rows_keep_their_own_bytes() -> None:
    manifest = parse_manifest(b"a.tif,1\n a.tif,1\n")
    assert manifest.raw_by_line()[2] == b" a.tif,1"


# ---------------------------------------------------------------------------------------------- CSV quoting (8.13)


def test_csv_quoted_key_with_a_comma_is_unquoted() -> None:
    row = parse_manifest(b'"a,b.tif",1\n').rows[0]
    assert (row.key, row.bands, row.raw) == ("a,b.tif", 1, b'"a,b.tif",1')


def test_csv_quoted_key_with_doubled_quotes_and_quoted_bands() -> None:
    row = parse_manifest(b'"say ""hi"".tif","3"\n').rows[0]
    assert (row.key, row.bands) == ('say "hi".tif', 3)


def test_badly_quoted_field_gets_the_true_reason() -> None:
    assert "malformed CSV quoting" in only_rejection(b'"a"b.tif",1\n').reason


def test_key_merely_starting_with_a_quote_is_taken_literally() -> None:
    assert keys(b'"north" a.tif,1\n') == ['"north" a.tif']


def test_failed_csv_returns_a_latin1_row_byte_identical(buckets, tmp_path) -> None:
    """End to end: claim, reconcile (no outputs, so every row fails), read the failed file back."""
    from cog_pipeline.run.claim import claim_one
    from cog_pipeline.publishing.reconcile import reconcile

    data = b"Counties/caf\xe9.tif,1\r\n  Counties/ok.tif , 1\r\n"
    buckets.input.put_bytes("m_raw.csv", data)
    claim = claim_one(
        buckets.input, buckets.input.head("m_raw.csv"), work_dir=tmp_path / "w",
        output_bucket=buckets.output_bucket, store_config=buckets.config,
    )
    result = reconcile(claim.run_dir, input_store=buckets.input)
    failed, _ = buckets.input.read_bytes(result.failed_key)
    assert failed == b"Counties/caf\xe9.tif,1\n  Counties/ok.tif , 1\n"
