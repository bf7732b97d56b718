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

_TS = r"\d{8}-\d{6}"
RESULT_RE = re.compile(rf"(processing|processed|failed)-({_TS})(-reasons)?\.csv\Z")
PROCESSING_RE = re.compile(rf"^(?P<base>.*)processing-(?P<ts>{_TS})\.csv\Z")


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)


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
