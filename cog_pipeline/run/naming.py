"""Names of everything a run creates, derived from the manifest key and the claim timestamp.

One place owns these rules so that claim, reconcile, the Crondor and the docs can never disagree on
what `test_raw.csv` becomes.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime, timezone

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
RAW_SUFFIX = "raw.csv"
CLAIM_MARKER_SUFFIX = ".claim"
RUN_DIR_PREFIX = "workflow-run-"

# A claim timestamp is the UTC second of the claim, plus `-N` (N >= 2) for the N-th run claimed in the same
# second on one work dir: names stay unique without pretending a claim happened later than it did.
_TS = r"\d{8}-\d{6}(?:-[0-9]+)?"
TIMESTAMP_RE = re.compile(_TS)  # fullmatch: a claim timestamp and nothing else
RESULT_RE = re.compile(rf"(processing|processed|failed)-({_TS})(-reasons)?\.csv\Z")
PROCESSING_RE = re.compile(rf"^(?P<base>.*)processing-(?P<ts>{_TS})\.csv\Z")


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """The claim second of `20261124-213600` or `20261124-213600-2` (the ordinal suffix is not time)."""
    second, _, ordinal = text[len("YYYYmmdd-HHMMSS") :].partition("-")
    if second or (ordinal and not ordinal.isdigit()):
        raise ValueError(f"not a claim timestamp: {text!r}")
    return datetime.strptime(text[: len("YYYYmmdd-HHMMSS")], TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)


def unique_timestamp(moment: datetime, ordinal: int) -> str:
    """The claim timestamp of the `ordinal`-th (1-based) run claimed in the second of `moment`."""
    ts = format_timestamp(moment)
    return ts if ordinal <= 1 else f"{ts}-{ordinal}"


def base_of(manifest_key: str) -> str:
    """`Counties/test_raw.csv` -> `Counties/test_`: the stem every result file of that manifest shares."""
    if manifest_key.endswith(RAW_SUFFIX):
        return manifest_key[: -len(RAW_SUFFIX)]
    if manifest_key.endswith(".csv"):
        return manifest_key[: -len(".csv")] + "-"
    return manifest_key + "-"


def is_pipeline_file(key: str) -> bool:
    """True for files the pipeline itself writes, which a broad pattern such as `*.csv` must never claim."""
    return bool(RESULT_RE.search(key)) or key.endswith(CLAIM_MARKER_SUFFIX)


def matches_pattern(key: str, pattern: str) -> bool:
    """The original matched the glob against the full key; `*` therefore also crosses '/'."""
    return fnmatch.fnmatchcase(key, pattern) and not is_pipeline_file(key)


# Names a manifest pattern must never match: images (the inputs) in the forms they are uploaded.
_IMAGE_SAMPLES = ("x.tif", "a/b.tif", "x.TIF", "x.tiff", "a/b.jpg")


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` cannot be a manifest pattern, or None. The CLI refuses it (exit 2) before any listing.

    The rule: a manifest pattern must end in the literal `.csv`. Only then can no match be an image (or any
    other object that is not named as a CSV), whatever the rest of the glob says; `*`, `*raw*` or `*.c?v`
    might match a `.tif` or a `.tif.bak`, so they are refused rather than guessed safe.
    """
    if not pattern:
        return "the manifest pattern is empty; give a glob ending in '.csv', such as '*raw.csv'"
    images = [name for name in _IMAGE_SAMPLES if fnmatch.fnmatchcase(name, pattern)]
    if images:
        return f"manifest pattern {pattern!r} matches images such as {images[0]!r}; give a glob ending in '.csv', such as '*raw.csv'"
    if not pattern.endswith(".csv"):
        return f"manifest pattern {pattern!r} does not end in '.csv', so it could match objects that are not manifests; give a glob ending in '.csv', such as '*raw.csv'"
    return None


def check_buckets(
    input_bucket: str, output_bucket: str, output_prefix: str | None, replace_inputs: bool, same: bool | None = None
) -> str | None:
    """Why outputs could overwrite the source GeoTIFFs, or None. The CLI refuses (exit 2) before claiming.

    `same`: whether the two buckets are one place (folder buckets: their resolved folders), when the names
    alone cannot tell; None compares the names (S3: both buckets are on one endpoint).

    A COG is written at the *same key* as its input, so one bucket for both replaces every source image
    unless the outputs go under a prefix (`--output-prefix`, outputs at PREFIX + key) or the operator says
    that is what they want (`--replace-inputs`). A prefix that is empty, absolute, not a folder (no final
    '/') or holds '.'/'..' segments cannot keep outputs apart and is refused too. (Rows whose own key lies
    under the prefix are refused per row: `key_under_output_prefix`.)
    """
    if not (input_bucket == output_bucket if same is None else same):
        return None
    if replace_inputs:
        return None
    both = f"both {input_bucket!r}" if input_bucket == output_bucket else f"one folder ({input_bucket!r} and {output_bucket!r})"
    if output_prefix is None or output_prefix.strip("/ ") == "":
        return (
            f"input and output bucket are {both}: the COGs would overwrite the source GeoTIFFs; "
            "give --output-prefix PREFIX/ (outputs at PREFIX/<key>) or --replace-inputs"
        )
    parts = output_prefix.split("/")
    if output_prefix.startswith("/") or not output_prefix.endswith("/") or any(p in ("", ".", "..") for p in parts[:-1]):
        return (
            f"output prefix {output_prefix!r} must be a folder such as 'cogs/' (no leading '/', ending in '/', "
            "no empty, '.' or '..' segments) so outputs cannot land on the source GeoTIFFs"
        )
    return None


def key_under_output_prefix(key: str, output_prefix: str | None) -> bool:
    """True when an input key lies under the output prefix, so its neighbours' outputs could overwrite it."""
    return bool(output_prefix) and key.startswith(output_prefix or "")


def listing_prefix(pattern: str) -> str:
    """The literal start of a glob: list only that much of the bucket."""
    match = re.search(r"[*?\[]", pattern)
    return pattern if match is None else pattern[: match.start()]


@dataclass(frozen=True)
class RunNames:
    """Keys in the input bucket and the local run-directory name for one claimed manifest."""

    manifest_key: str
    timestamp: str

    @property
    def base(self) -> str:
        return base_of(self.manifest_key)

    @property
    def processing_key(self) -> str:
        return f"{self.base}processing-{self.timestamp}.csv"

    @property
    def processed_key(self) -> str:
        return f"{self.base}processed-{self.timestamp}.csv"

    @property
    def failed_key(self) -> str:
        return f"{self.base}failed-{self.timestamp}.csv"

    @property
    def reasons_key(self) -> str:
        return f"{self.base}failed-{self.timestamp}-reasons.csv"

    @property
    def claim_marker_key(self) -> str:
        return self.manifest_key + CLAIM_MARKER_SUFFIX

    @property
    def run_dir_name(self) -> str:
        return f"{RUN_DIR_PREFIX}{self.timestamp}"


def job_id_of(line: int) -> str:
    """The job id of the manifest row on 1-based `line`: the one convention every part uses."""
    return f"ID{line:07d}"


def line_of_job_id(job_id: str) -> int | None:
    """The manifest line of a job id made by `job_id_of` (None for anything else)."""
    digits = job_id[2:]
    return int(digits) if job_id.startswith("ID") and digits.isdigit() else None
