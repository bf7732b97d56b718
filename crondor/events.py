"""The Crondor's event log (``<work_dir>/crondor.log``): when its last tick started and how the last one ended.

Read with the HTCondor bindings' ``JobEventLog``. In the local universe the execute event (001) is written
when the tick's process starts (after the cron deferral), and each tick of a job that stays queued
(``on_exit_remove = false``) ends with an eviction event (004) "terminated and requeued" that carries the
exit code; a terminated (005), aborted (009) or held (012) event ends a tick too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXECUTE, EVICTED, TERMINATED, ABORTED, HELD = 1, 4, 5, 9, 12


@dataclass
class Ticks:
    started: float | None = None  # the last tick's start (epoch seconds)
    ended: float | None = None  # the last finished tick's end
    outcome: str | None = None  # "exit code 0", "killed by signal 9", "removed", "held: ...", "evicted"
    exit_code: int | None = None
    seconds: float | None = None  # how long the last finished tick took
    count: int = 0  # ticks started
    running: bool = False  # a tick started and has not ended yet


def _outcome(event: Any) -> tuple[str, int | None]:
    if event.type == HELD:
        return f"held: {event.get('HoldReason', 'no reason given')}", None
    if event.type == ABORTED:
        return "removed", None
    if event.type == EVICTED and not event.get("TerminatedAndRequeued"):
        return "evicted before it ended", None
    if event.get("TerminatedNormally"):
        code = int(event.get("ReturnValue", 0))
        return f"exit code {code}", code
    return f"killed by signal {event.get('TerminatedBySignal', '?')}", None


def read_ticks(log: Path, cluster: int) -> Ticks:
    """The ticks of job `cluster` in its event log (a log that does not exist yet: no tick so far)."""
    from cog_pipeline.engines.pegasus.condor import htcondor_module

    ticks = Ticks()
    try:
        log.open("rb").close()  # JobEventLog reads a folder or an unreadable file as an empty log: raise instead
    except FileNotFoundError:
        return ticks
    with htcondor_module().JobEventLog(str(log)) as events:
        for event in events.events(stop_after=0):
            if event.cluster != cluster:
                continue
            if event.type == EXECUTE:
                ticks.started, ticks.running = event.timestamp, True
                ticks.count += 1
            elif ticks.running and event.type in (EVICTED, TERMINATED, ABORTED, HELD):
                ticks.ended, ticks.running, ticks.seconds = event.timestamp, False, event.timestamp - ticks.started
                ticks.outcome, ticks.exit_code = _outcome(event)
    return ticks
