"""`PegasusEngine`: the Engine protocol (engines/base.py) for Pegasus on HTCondor."""

from __future__ import annotations

from collections.abc import Callable

from ...rundir import RunDir
from .monitor import workflow_is_running
from .plan import plan_and_submit
from .labels import label_outputs
from .records import collect_job_records
from .scratch import remove_scratch


class PegasusEngine:
    name = "pegasus"

    def __init__(self, submit: bool = True) -> None:
        self.submit_plan = submit

    def submit(self, run_dir: RunDir, echo: Callable[[str], None]) -> str:
        return plan_and_submit(run_dir, submit=self.submit_plan, echo=echo)

    def is_running(self, run_dir: RunDir) -> bool:
        return workflow_is_running(run_dir)

    def collect_job_records(self, run_dir: RunDir) -> int:
        """Every job has ended: per-row reasons from the submit directory, the outputs' Content-Type, then the
        S3 scratch prefix goes."""
        try:
            written = collect_job_records(run_dir)
            label_outputs(run_dir)
            return written
        finally:
            # --cleanup none (nonsharedfs on S3): pegasus-s3 rm cannot delete keys with spaces; boto3 can.
            remove_scratch(run_dir)
