"""When schedule entries fire, and what a pass of the scheduler does with the fire times it finds.

Fire times come from each entry's cron in the schedule's time zone (daylight saving time as cron
does it: a time that does not exist that day fires at the next one that does, a time that occurs
twice fires once). A pass looks at the fire times since the entry was last looked at: the latest
one runs if it is within the catch-up window, every other one is recorded as missed, so a scheduler
that was down never replays a burst of backups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from cronsim import CronSim

# A scheduler down for longer than this has its missed firings before it summarised, not listed.
MAX_MISSED_RECORDED = 100
# Fire times further back than this are not even enumerated (an every-minute entry down for a year).
LOOK_BACK = timedelta(days=31)


class FiringOutcome(StrEnum):
    FIRED = "fired"  # the backup was requested
    SKIPPED = "skipped"  # the entry's previous backup was still running
    MISSED = "missed"  # no scheduler ran within the catch-up window


@dataclass(frozen=True)
class Firing:
    """What became of one entry's fire time; recorded once, whatever the number of schedulers."""

    schedule: str
    fire_at: datetime
    outcome: FiringOutcome
    backup_id: str | None = None
    reason: str | None = None
    missing_reported_at: datetime | None = None  # when its backup was reported missing (notifications)


@dataclass(frozen=True)
class DueFirings:
    run: datetime | None  # the fire time to run now, if any
    missed: tuple[datetime, ...]  # oldest first, at most MAX_MISSED_RECORDED
    more_missed: int  # missed fire times older than those listed


def fire_times(cron: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The entry's fire times strictly after ``after``, in UTC, endlessly."""
    for local in CronSim(cron, after.astimezone(ZoneInfo(timezone))):
        yield local.astimezone(UTC)


def next_fire_times(cron: str, timezone: str, now: datetime, count: int) -> list[datetime]:
    times = fire_times(cron, timezone, now)
    return [next(times) for _ in range(count)]


def due_firings(cron: str, timezone: str, checked_until: datetime, now: datetime, catch_up: timedelta) -> DueFirings:
    """The fire times in (checked_until, now]: the latest runs when it is at most ``catch_up`` old;
    the others, and that one when older, are missed."""
    start = max(checked_until, now - LOOK_BACK)
    found: deque[datetime] = deque(maxlen=MAX_MISSED_RECORDED + 1)
    total = 0
    for fire_at in fire_times(cron, timezone, start):
        if fire_at > now:
            break
        found.append(fire_at)
        total += 1
    if found and now - found[-1] <= catch_up:
        run: datetime | None = found.pop()
        total -= 1
    else:
        run = None
    missed = tuple(found)[-MAX_MISSED_RECORDED:]
    return DueFirings(run, missed, total - len(missed))
