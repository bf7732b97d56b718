"""The run's life as one state machine: the states, the allowed moves (one table) and the one guard.

Every write of run.json goes through `check_transition`, so the promise "a run only ever moves forward" is
enforced in one place: an engine, a hand-run command or a late END hook can never move a reconciled run back
to running. Staying in a state (to record a fact) is not a move and always allowed. See docs/architecture.md for
how these states line up with the markers in the bucket.
"""

from __future__ import annotations

from enum import Enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


class RunState(StrEnum):
    CLAIMING = "claiming"  # run directory made, manifest not yet renamed in the bucket
    CLAIMED = "claimed"  # processing file in the bucket, manifest copied here
    GENERATED = "generated"  # Pegasus files written (planned, maybe, but not submitted)
    RUNNING = "running"  # handed to an engine
    RECONCILED = "reconciled"  # result files written, processing file removed (final)
    ABANDONED = "abandoned"  # the claim was lost (to another scan, or cancelled): no result file is this run's (final)


S = RunState
# Where each state may go next. Nothing leaves a final state.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.CLAIMING: frozenset({S.CLAIMED, S.ABANDONED}),
    # Reconcile is the way out of every live state; ABANDONED when reconcile's fence finds the claim lost
    # (the processing file is no longer this claim's), so the run publishes no result file.
    S.CLAIMED: frozenset({S.GENERATED, S.RECONCILED, S.ABANDONED}),
    S.GENERATED: frozenset({S.RUNNING, S.RECONCILED, S.ABANDONED}),
    S.RUNNING: frozenset({S.RECONCILED, S.ABANDONED}),
    S.RECONCILED: frozenset(),
    S.ABANDONED: frozenset(),
}
FINAL = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)
IN_FLIGHT = frozenset({S.CLAIMED, S.GENERATED, S.RUNNING})


class IllegalTransition(RuntimeError):
    """A step tried to move a run backwards or out of a final state: a bug or a stale caller, never data."""


def parse_state(value: object) -> RunState:
    try:
        return RunState(str(value))
    except ValueError:
        raise ValueError(f"unknown run state {value!r}") from None


def check_transition(old: RunState | None, new: RunState, where: str = "run") -> None:
    """Raise IllegalTransition unless `old` -> `new` is in TRANSITIONS (or stays where it is)."""
    if old is None:  # the first write of a run is not a move (claim writes CLAIMING; fixtures any state)
        return
    if new is old:  # staying put (to record a fact) is not a move
        return
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{where} is {old}; it cannot move to {new}")
