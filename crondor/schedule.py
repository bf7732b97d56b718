"""Cron schedules as HTCondor's CronTab takes them: checked field by field (the [crondor] schedule setting)."""

from __future__ import annotations

import re

# The submit commands the five fields become, and each field's range.
CRON_FIELDS = (("cron_minute", "minute", 0, 59), ("cron_hour", "hour", 0, 23), ("cron_day_of_month", "day of month", 1, 31),
               ("cron_month", "month", 1, 12), ("cron_day_of_week", "day of week", 0, 7))
_CRON_ITEM = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")


class ScheduleError(ValueError):
    """A schedule HTCondor's CronTab cannot take; the message names the field."""


def cron_fields(schedule: str) -> dict[str, str]:
    """The five fields of a cron schedule as submit commands (cron_minute, ...); ScheduleError names the bad one.

    Each field is `*` or a number, a range `a-b` or a list of them, each optionally `/step`, as HTCondor's
    CronTab takes them (no names such as `mon`).
    """
    fields = schedule.split()
    if len(fields) != len(CRON_FIELDS):
        raise ScheduleError(
            f"{schedule!r}: give 5 cron fields, 'minute hour day-of-month month day-of-week' "
            f"(e.g. '*/15 * * * *'), not {len(fields)}"
        )
    for value, (_, what, low, high) in zip(fields, CRON_FIELDS):
        for item in value.split(","):
            match = _CRON_ITEM.fullmatch(item)
            numbers = [int(n) for n in match.groups()[1:3] if n is not None] if match else []
            step = match.group(4) if match else None
            if not match or any(not low <= n <= high for n in numbers) or (len(numbers) == 2 and numbers[0] > numbers[1]) or step == "0" or (step and int(step) < 1):
                raise ScheduleError(
                    f"{schedule!r}: the {what} field {value!r} is not '*', a number {low}-{high}, a range a-b "
                    "or a list of them, each optionally /step"
                )
    return {command: value for value, (command, *_rest) in zip(fields, CRON_FIELDS)}
