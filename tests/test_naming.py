"""Run naming: what a manifest key becomes, which keys a claim pattern matches, and where to list."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cog_pipeline.run.naming import (
    PROCESSING_RE,
    RunNames,
    base_of,
    format_timestamp,
    is_pipeline_file,
    listing_prefix,
    matches_pattern,
    parse_timestamp,
)

TS = "20260101-000000"


# ---------------------------------------------------------------------------------------------- base_of


def test_base_of_raw_manifest_keeps_everything_before_raw_csv() -> None:
    assert base_of("Counties/test_raw.csv") == "Counties/test_"


def test_base_of_plain_csv_gets_a_dash() -> None:
    assert base_of("Counties/batch.csv") == "Counties/batch-"


def test_base_of_non_csv_key_gets_a_dash() -> None:
    assert base_of("Counties/batch") == "Counties/batch-"


def test_base_of_bare_raw_csv_is_empty() -> None:
    assert base_of("raw.csv") == ""


# ---------------------------------------------------------------------------------------------- RunNames


def test_run_names_result_keys_share_the_base_and_timestamp() -> None:
    names = RunNames("Counties/test_raw.csv", TS)
    assert (names.processing_key, names.processed_key, names.failed_key, names.reasons_key) == (
        f"Counties/test_processing-{TS}.csv",
        f"Counties/test_processed-{TS}.csv",
        f"Counties/test_failed-{TS}.csv",
        f"Counties/test_failed-{TS}-reasons.csv",
    )


def test_run_names_claim_marker_sits_beside_the_manifest() -> None:
    assert RunNames("Counties/test_raw.csv", TS).claim_marker_key == "Counties/test_raw.csv.claim"


def test_run_names_run_dir_name_carries_the_timestamp() -> None:
    assert RunNames("a_raw.csv", TS).run_dir_name == f"workflow-run-{TS}"


def test_processing_key_is_recognised_by_processing_re_with_its_base_and_timestamp() -> None:
    names = RunNames("Counties/test_raw.csv", TS)
    match = PROCESSING_RE.match(names.processing_key)
    assert match is not None and (match["base"], match["ts"]) == ("Counties/test_", TS)


def test_processing_re_does_not_match_a_key_with_a_trailing_newline() -> None:
    assert PROCESSING_RE.match(f"a_processing-{TS}.csv\n") is None


# ---------------------------------------------------------------------------------------------- timestamps


def test_timestamp_round_trips_in_utc() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert parse_timestamp(format_timestamp(moment)) == moment


def test_format_timestamp_converts_other_zones_to_utc() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "20260304-030607"


# ---------------------------------------------------------------------------------------------- patterns


def test_star_matches_across_folders_like_the_original_full_key_glob() -> None:
    assert matches_pattern("Counties/WI/x_raw.csv", "Counties/*raw.csv")


def test_pattern_is_matched_against_the_full_key() -> None:
    assert not matches_pattern("Counties/x_raw.csv", "x_raw.csv")


def test_pattern_matching_is_case_sensitive() -> None:
    assert not matches_pattern("Counties/X_RAW.CSV", "*raw.csv")


def test_question_mark_and_brackets_work_as_in_fnmatch() -> None:
    assert matches_pattern("Counties/b1_raw.csv", "Counties/[ab]?_raw.csv")


@pytest.mark.parametrize(
    "key",
    [
        f"Counties/x_processing-{TS}.csv",
        f"Counties/x_processed-{TS}.csv",
        f"Counties/x_failed-{TS}.csv",
        f"Counties/x_failed-{TS}-reasons.csv",
        f"Counties/x-processing-{TS}.csv",
    ],
)
def test_pipeline_result_files_never_match_a_broad_csv_pattern(key: str) -> None:
    assert not matches_pattern(key, "*.csv")


def test_claim_markers_never_match_even_a_match_everything_pattern() -> None:
    assert not matches_pattern("Counties/x_raw.csv.claim", "*")


def test_every_run_names_output_is_a_pipeline_file() -> None:
    names = RunNames("Counties/test_raw.csv", TS)
    keys = [names.processing_key, names.processed_key, names.failed_key, names.reasons_key, names.claim_marker_key]
    assert all(is_pipeline_file(k) for k in keys)


def test_user_csv_mentioning_processed_without_a_timestamp_still_matches() -> None:
    assert matches_pattern("Counties/processed-list.csv", "*.csv")


def test_manifest_itself_is_not_a_pipeline_file() -> None:
    assert not is_pipeline_file("Counties/test_raw.csv")


# ---------------------------------------------------------------------------------------------- listing prefix


def test_listing_prefix_stops_at_the_first_wildcard() -> None:
    assert listing_prefix("Counties/WI/*_raw.csv") == "Counties/WI/"


def test_listing_prefix_stops_at_question_mark_and_bracket() -> None:
    assert (listing_prefix("Counties/W?/x"), listing_prefix("Counties/[WI]/x")) == ("Counties/W", "Counties/")


def test_listing_prefix_of_a_literal_pattern_is_the_pattern() -> None:
    assert listing_prefix("Counties/test_raw.csv") == "Counties/test_raw.csv"


def test_listing_prefix_of_a_leading_star_is_empty() -> None:
    assert listing_prefix("*raw.csv") == ""


@pytest.mark.parametrize("pattern", ["Counties/*raw.csv", "Coun?ies/x*", "C[o]unties/*", "*"])
def test_every_key_a_pattern_matches_starts_with_its_listing_prefix(pattern: str) -> None:
    keys = ["Counties/a_raw.csv", "Counties/WI/b_raw.csv", "Counties/x.tif", "Other/c_raw.csv", "Countiesx"]
    matching = [k for k in keys if matches_pattern(k, pattern)]
    assert matching and all(k.startswith(listing_prefix(pattern)) for k in matching)


# ---------------------------------------------------------------------------------------------- issue 8.4, 8.5, 8.13


@pytest.mark.parametrize("pattern", ["*", "*.tif", "img*", "*raw*", "*.c?v", "*.CSV", "", "a/b.tif"])
def test_patterns_that_could_match_an_image_are_refused(pattern):
    from cog_pipeline.run.naming import check_pattern

    problem = check_pattern(pattern)
    assert problem is not None and "'.csv'" in problem and "\n" not in problem


@pytest.mark.parametrize("pattern", ["*raw.csv", "*.csv", "Counties/*_raw.csv", "x_raw.csv"])
def test_patterns_ending_in_csv_are_accepted(pattern):
    from cog_pipeline.run.naming import check_pattern

    assert check_pattern(pattern) is None


def test_timestamps_with_an_ordinal_parse_to_their_second():
    from cog_pipeline.run.naming import PROCESSING_RE, RunNames, parse_timestamp

    names = RunNames("Counties/t_raw.csv", "20261124-213600-2")
    assert PROCESSING_RE.match(names.processing_key).group("ts") == "20261124-213600-2"
    assert parse_timestamp("20261124-213600-2") == parse_timestamp("20261124-213600")
    with pytest.raises(ValueError):
        parse_timestamp("20261124-213600-x")


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("in", "out", None, False), False),
        (("b", "b", None, False), True),
        (("b", "b", "", False), True),
        (("b", "b", "/", False), True),
        (("b", "b", None, True), False),
        (("b", "b", "cogs/", False), False),
        (("b", "b", "cogs", False), True),
        (("b", "b", "/cogs/", False), True),
        (("b", "b", "a/../", False), True),
        (("b", "b", "./", False), True),
    ],
)
def test_check_buckets_refuses_outputs_that_could_overwrite_inputs(args, refused):
    from cog_pipeline.run.naming import check_buckets

    problem = check_buckets(*args)
    assert (problem is not None) == refused
    if problem:
        assert "\n" not in problem and ("--output-prefix" in problem or "prefix" in problem)


def test_key_under_the_output_prefix_is_detected():
    from cog_pipeline.run.naming import key_under_output_prefix

    assert (key_under_output_prefix("cogs/a.tif", "cogs/"), key_under_output_prefix("a.tif", "cogs/"),
            key_under_output_prefix("a.tif", None)) == (True, False, False)
