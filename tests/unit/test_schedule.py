"""When schedule entries fire, and which fire times a scheduler pass runs or records as missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backup_common.domain.schedule import LOOK_BACK, MAX_MISSED_RECORDED, due_firings, fire_times, next_fire_times

HOUR = timedelta(hours=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_fire_times_are_in_the_schedule_time_zone_and_given_in_utc() -> None:
    assert next_fire_times("0 2 * * *", "Europe/Paris", at("2026-12-01 12:00"), 2) == [
        at("2026-12-02 01:00"),
        at("2026-12-03 01:00"),
    ]


def test_a_time_that_does_not_exist_on_a_spring_forward_day_fires_once_at_the_next_that_does() -> None:
    # 2026-03-29 02:30 does not exist in Paris: clocks go from 02:00 to 03:00.
    times = next_fire_times("30 2 * * *", "Europe/Paris", at("2026-03-27 12:00"), 3)

    assert times == [at("2026-03-28 01:30"), at("2026-03-29 01:00"), at("2026-03-30 00:30")]


def test_a_time_that_occurs_twice_on_a_fall_back_day_fires_once() -> None:
    # 2026-10-25 02:30 happens twice in Paris.
    times = list(zip(range(3), fire_times("30 2 * * *", "Europe/Paris", at("2026-10-24 12:00")), strict=False))

    assert [fired for _, fired in times] == [at("2026-10-25 00:30"), at("2026-10-26 01:30"), at("2026-10-27 01:30")]


def test_the_fire_time_just_passed_runs() -> None:
    due = due_firings("* * * * *", "UTC", at("2026-12-01 12:00:30"), at("2026-12-01 12:01:00.4"), HOUR)

    assert (due.run, due.missed, due.more_missed) == (at("2026-12-01 12:01"), (), 0)


def test_nothing_is_due_between_two_fire_times() -> None:
    due = due_firings("0 2 * * *", "UTC", at("2026-12-01 02:00"), at("2026-12-01 12:00"), HOUR)

    assert (due.run, due.missed, due.more_missed) == (None, (), 0)


def test_a_firing_missed_within_the_catch_up_window_runs_once_and_an_older_one_is_missed() -> None:
    down_at_two = due_firings("0 2 * * *", "UTC", at("2026-12-01 01:59"), at("2026-12-01 02:40"), HOUR)
    down_until_four = due_firings("0 2 * * *", "UTC", at("2026-12-01 01:59"), at("2026-12-01 04:00"), HOUR)

    assert (down_at_two.run, down_at_two.missed) == (at("2026-12-01 02:00"), ())
    assert (down_until_four.run, down_until_four.missed) == (None, (at("2026-12-01 02:00"),))


def test_a_scheduler_down_for_hours_runs_only_the_latest_firing_never_a_burst() -> None:
    due = due_firings("*/10 * * * *", "UTC", at("2026-12-01 08:55"), at("2026-12-01 12:05"), HOUR)

    assert due.run == at("2026-12-01 12:00")
    assert due.missed == tuple(at("2026-12-01 09:00") + timedelta(minutes=10 * i) for i in range(18))
    assert due.more_missed == 0


def test_a_catch_up_window_of_zero_runs_only_a_fire_time_that_is_exactly_now() -> None:
    due = due_firings("0 * * * *", "UTC", at("2026-12-01 11:30"), at("2026-12-01 12:00:01"), timedelta(0))

    assert (due.run, due.missed) == (None, (at("2026-12-01 12:00"),))


@pytest.mark.parametrize("down", [timedelta(days=2), timedelta(days=400)])
def test_missed_firings_are_listed_up_to_a_bound_and_the_rest_counted(down: timedelta) -> None:
    now = at("2026-12-01 12:00:30")

    due = due_firings("* * * * *", "UTC", now - down, now, HOUR)

    assert due.run == at("2026-12-01 12:00")
    assert len(due.missed) == MAX_MISSED_RECORDED
    assert due.missed[-1] == at("2026-12-01 11:59")
    looked_at = min(down, LOOK_BACK)
    assert due.more_missed == int(looked_at.total_seconds() // 60) - 1 - MAX_MISSED_RECORDED
