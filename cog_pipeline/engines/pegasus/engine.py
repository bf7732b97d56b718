"""`PegasusEngine`: the Engine protocol (engines/base.py) for Pegasus on HTCondor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cog_pipeline.config import PipelineConfig
from cog_pipeline.engines.base import Outcome
from cog_pipeline.replicas.pegasus_keys import pegasus_key_problem
from cog_pipeline.run.rundir import RUNNING, RunDir

from .condor import check_pegasus
from .labels import label_outputs
from .monitor import workflow_is_running
from .plan import plan_and_submit
from .records import collect_job_records
from .scratch import remove_scratch


class PegasusEngine:
    name = "pegasus"
    adopts_unplanned = False
    writes_credentials = True  # pegasus-plan and the transfer jobs read key material from credentials.conf
    key_problem = staticmethod(pegasus_key_problem)  # keys pegasus-transfer / pegasus-s3 cannot carry

    def __init__(self, config: PipelineConfig, *, submit: bool = True, **_: Any) -> None:
        self.submit_plan = submit

    def begin(self) -> None:
        check_pegasus()  # one line and nothing claimed when pegasus-plan cannot run here

    def end(self) -> None:
        pass

    def run(self, runs: list[RunDir], echo: Callable[[str], None]) -> dict[Path, Outcome]:
        """Plan and submit each run. A RUNNING run handed here was adopted by the tick, so nothing runs it any
        more, yet it was never reconciled (its END hook did not run or failed, or the DAG was removed): it has
        ended, and the tick finishes it."""
        outcomes = {}
        for run_dir in runs:
            if run_dir.load().state == RUNNING:
                outcomes[run_dir.path] = Outcome("ended")
            else:
                outcomes[run_dir.path] = Outcome(plan_and_submit(run_dir, submit=self.submit_plan, echo=echo))
        return outcomes

    def is_running(self, run_dir: RunDir) -> bool:
        return workflow_is_running(run_dir)

    def handed_over(self, run_dir: RunDir) -> bool:
        info = run_dir.load()
        return info.state == RUNNING or info.pegasus.planned

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
