"""Python warnings (rasterio's NotGeoreferencedWarning, deprecations) go to `<work dir>/cog-pipeline.log`,
timestamped, instead of the operator's terminal or the Crondor's output, where they read like failures."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cog_pipeline.cli.tick_log import WARNINGS_LOG_NAME


@contextmanager
def warnings_to_log(work_dir: Path) -> Iterator[Path | None]:
    """Inside the block every warning is one line in the work dir's log (or dropped if it cannot be written)."""
    logger = logging.getLogger("py.warnings")
    path: Path | None = Path(work_dir) / WARNINGS_LOG_NAME
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    except OSError:  # a read-only work dir is the scan's own error to report, not this log's
        handler, path = logging.NullHandler(), None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(message)s"))
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [handler], False
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once per place, as Python's default
            yield path
    finally:
        logging.captureWarnings(False)
        handler.close()
        logger.handlers, logger.propagate = saved
